"""The `--engine` option shared by commands that can run over Flower."""

from __future__ import annotations

import importlib
from types import ModuleType

import click

from ..errors import ConfigError

ENGINES = ("in-process", "flower")
OLD_SPELLINGS = {"inprocess": "in-process"}  # fedinv 0.1's spelling, still accepted


class _EngineChoice(click.Choice):
    """ENGINES, shown and checked; an old spelling is read as today's."""

    def convert(self, value, param, ctx):
        return super().convert(OLD_SPELLINGS.get(value, value), param, ctx)


def engine_option(what: str):
    """--engine: where the nodes' work runs (the one meaning of "engine" in fedinv)."""
    return click.option("--engine", type=_EngineChoice(ENGINES), default="in-process", show_default=True,
                        help=f"in-process: fedinv's own loop in this process; flower: {what} (needs the extra: "
                             f"pip install 'fedinv[flower]')")


def flower_module(name: str) -> ModuleType:
    """`fedinv.flower.<name>`, or a clear error when Flower is not installed."""
    try:
        return importlib.import_module(f"fedinv.flower.{name}")
    except ImportError as e:
        raise ConfigError(f"--engine flower needs Flower: pip install 'fedinv[flower]' ({e})") from e
