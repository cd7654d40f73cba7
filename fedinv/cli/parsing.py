"""Parsing of option values shared by several commands."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import click

from ..config import Range
from ..errors import ConfigError


def parse_numbers(text: str | None, option: str) -> list[int] | None:
    """'0,3' or '0-2,4' -> [0, 3] / [0, 1, 2, 4]; empty or None -> None (meaning: all)."""
    if not text:
        return None
    numbers: list[int] = []
    try:
        for part in text.split(","):
            lo, _, hi = part.partition("-")
            numbers += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
    except ValueError:
        raise ConfigError(f"{option} {text!r}: expected comma-separated numbers or ranges, e.g. 0,3 or 0-2")
    return numbers


def parse_floats(text: str | None, option: str) -> tuple[float, ...] | None:
    """'0.5,0.25' -> (0.5, 0.25); empty or None -> None."""
    if not text:
        return None
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"{option} {text!r}: expected comma-separated numbers, e.g. 0.2860 or 0.49,0.48,0.45")


# The commands that read teachers take models from outside the registry only when named here.
trust_model_option = click.option(
    "--trust-model", "trust", multiple=True, metavar="MODULE:FACTORY",
    help="a MODULE:FACTORY model (given as --model, or named by a checkpoint, e.g. one `fedinv import-teacher` "
         "wrote) that fedinv may build: building it imports and runs that code, so fedinv does it only for "
         "the factories named here (repeat for several)")


def check_option(flag: str, value: float, valid: Range) -> None:
    """A command's own numeric option (one no config declares) in its range, as a one-line error."""
    if value not in valid:
        raise ConfigError(f"{flag} must be {valid}, got {value}")


def seed_option(tables: tuple[str, ...]) -> Callable:
    """`--seed N`: the seed of every table in `tables` at once (the same as one `--set TABLE.seed=N` each;
    a `--set` given beside it wins)."""
    return click.option("--seed", type=int, default=None,
                        help=f"set the seed of every stage ({', '.join(t + '.seed' for t in tables)}) at once; "
                             f"a --set of one of them wins")


def with_seed(overrides: tuple[str, ...], seed: int | None, tables: tuple[str, ...]) -> tuple[str, ...]:
    """The --set overrides with `--seed` put in first (so that an explicit --set wins)."""
    return tuple(f"{t}.seed={seed}" for t in tables) + overrides if seed is not None else overrides


print_config_option = click.option(
    "--print-config", is_flag=True,
    help="print the effective config (the TOML with --seed and --set applied, every default filled in) as TOML "
         "and exit without running")


def _progress(ctx: click.Context, param: click.Parameter, value: bool | None) -> bool:
    """Not given: on, unless the command line says -q (`fedinv -q ...`)."""
    return (not ctx.find_root().params.get("quiet", False)) if value is None else value


def progress_option(what: str = "progress bars") -> Callable:
    """--progress/--no-progress: the bars are drawn on a terminal only (never into a log file), and
    `fedinv -q` turns them off unless --progress asks for them."""
    return click.option("--progress/--no-progress", default=None, callback=_progress,
                        help=f"show {what} (on a terminal only; default: on, off with fedinv -q)")


tensorboard_option = click.option(
    "--tensorboard", is_flag=True,
    help="also write the metrics as TensorBoard event files in the output's tensorboard folder (follow with "
         "`tensorboard --logdir OUT`); needs pip install 'fedinv[tensorboard]'")


EXAMPLES = Path(__file__).resolve().parent.parent / "configs"  # shipped with the package


def examples() -> list[str]:
    """The names of the configs shipped with fedinv."""
    return sorted(p.stem for p in EXAMPLES.glob("*.toml"))


class ConfigFile(click.ParamType):
    """A TOML file, or the name of a config shipped with fedinv (`demo` for fedinv/configs/demo.toml)."""

    name = "CONFIG"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Path:
        path = Path(value)
        if path.is_file():
            return path
        shipped = EXAMPLES / f"{value}.toml"
        if len(path.parts) == 1 and not str(value).endswith(".toml") and shipped.is_file():
            return shipped
        self.fail(f"{value!r} is neither a file nor a config shipped with fedinv ({', '.join(examples())})", param,
                  ctx)
