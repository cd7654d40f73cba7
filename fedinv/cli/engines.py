"""The `--engine` option shared by commands that can run over Flower."""

from __future__ import annotations

import importlib
from types import ModuleType

import click

from ..errors import ConfigError

ENGINES = ("inprocess", "flower")


def engine_option(what: str):
    return click.option("--engine", type=click.Choice(ENGINES), default="inprocess", show_default=True,
                        help=f"inprocess: fedinv's own loop; flower: {what} (needs the extra: "
                             f"pip install 'fedinv[flower]')")


def flower_module(name: str) -> ModuleType:
    """`fedinv.flower.<name>`, or a clear error when Flower is not installed."""
    try:
        return importlib.import_module(f"fedinv.flower.{name}")
    except ImportError as e:
        raise ConfigError(f"--engine flower needs Flower: pip install 'fedinv[flower]' ({e})") from e
