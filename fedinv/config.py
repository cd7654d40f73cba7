"""Typed, frozen configs: the field helper every stage's config is built with, the configs both modes
share (the dataset, the partition), their dict/TOML round trip, and their click options. Each
stage's own config lives with the stage (`fedinv.oneshot.teachers.TeacherConfig`,
`fedinv.oneshot.synthesis.config.SynthesisConfig`, `fedinv.oneshot.student.config.StudentConfig`,
`fedinv.federated.config`).

Each field carries its help text in `metadata["help"]`: the same text documents the library,
fills `--help`, and travels (as values) inside every artifact the stage writes.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import tomllib
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TypeVar

from .errors import ConfigError, FieldError
from .runtime import PRECISIONS

T = TypeVar("T")


@dataclass(frozen=True)
class Range:
    """Where a numeric field's values may lie: from `low` to `high` (None: no bound), each end
    closed unless marked open. Every float must also be finite (NaN and inf are never valid)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        if isinstance(value, float) and not math.isfinite(value):
            return False
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {_number(self.low)}"
        if self.low is None:
            return f"{'<' if self.high_open else '<='} {_number(self.high)}"
        return (f"in {'(' if self.low_open else '['}{_number(self.low)}, {_number(self.high)}"
                f"{')' if self.high_open else ']'}")


def _number(x: float | None) -> str:
    """1e9 for the large round bounds, else as Python writes the number."""
    if isinstance(x, int) and abs(x) >= 10 ** 6:
        mantissa, exponent = f"{x:.0e}".split("e+")
        return f"{mantissa}e{int(exponent)}"
    return f"{x:g}"


# The ranges most fields share (a field may declare its own).
COUNT = Range(1, 10 ** 9)  # epochs, batch sizes, images, steps: at least one
SIZE = Range(0, 10 ** 9)  # counts where 0 means none (or "off")
POSITIVE = Range(0, low_open=True)  # concentrations, penalties that must not vanish
LEARNING_RATE = Range(0, 10, low_open=True)  # no optimizer here learns anything at a step of 10 or more
TEMPERATURE = Range(0, 1000, low_open=True)  # softmax temperatures: beyond 1000 every target is uniform
WEIGHT = Range(0)  # loss weights and penalties: 0 switches a term off
MOMENTUM = Range(0, 1, high_open=True)  # SGD momentum, moving-average rates
FRACTION = Range(0, 1, low_open=True)  # shares of the nodes, per-round decay factors
SEED = Range(0, 10 ** 18)


def option(default: Any, help: str, choices: tuple[str, ...] | None = None, runtime: bool = False,
           before: Any = dataclasses.MISSING, valid: Range | None = None) -> Any:
    """A dataclass field with help text (and optional valid choices or range) for the CLI and docs.

    `runtime=True` marks a field that changes where or how fast a run computes, not what: a saved
    run may be continued with another value (`fedinv.train.resume.changes`). `before`: what a
    saved config without this field stands for, when the field was added with a default other
    than the behaviour before it; a value, or a function of the saved dict (`from_dict` fills it in).
    `valid`: the range of a numeric field, checked by `check_fields` whichever way the config is
    made (CLI, TOML, --set, Python) and shown in `--help`."""
    metadata = {"help": help, "choices": choices, "runtime": runtime, "valid": valid}
    if before is not dataclasses.MISSING:
        metadata["before"] = before
    return dataclasses.field(default=default, metadata=metadata)


def check_fields(cfg: Any) -> None:
    """Every field of `cfg` with declared choices or a declared range holds a valid value (a config's
    `__post_init__` calls this first); the error names the field, the valid values and the value."""
    for f in dataclasses.fields(cfg):
        value, valid = getattr(cfg, f.name), f.metadata.get("valid")
        if valid is not None and value is not None:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise FieldError(f.name, f"must be a number {valid}, got {value!r}")
            if value not in valid:
                finite = "" if math.isfinite(value) else "a finite number "
                raise FieldError(f.name, f"must be {finite}{valid}, got {value!r}")
        if f.metadata.get("choices") and value not in f.metadata["choices"]:
            raise FieldError(f.name, f"must be one of {', '.join(f.metadata['choices'])}; got {value!r}")


def precision_option() -> Any:
    """The `precision` field of every stage that trains or synthesizes (one help text, one set of choices)."""
    return option("auto", "mixed precision: auto (fp16 on CUDA; bf16 on a CPU with AMX or AVX512-BF16, "
                  "fp32 on other CPUs), fp32, bf16, fp16; what ran is recorded in every artifact",
                  choices=PRECISIONS)


def device_option() -> Any:
    """The `device` field of every stage: where it computes, not what (a run-time field)."""
    return option("auto", "auto, cpu, cuda, cuda:N or mps", runtime=True)


@dataclass(frozen=True)
class DataConfig:
    """Which dataset, and where it lives."""

    dataset: str = option("fashion-mnist", "dataset name: fashion-mnist, mnist, cifar10, cifar100, svhn, "
                          "imagefolder (a folder with train/ and test/ class folders, given by --data-root), "
                          "synthetic-tiny (generated, for tests)")
    data_root: str = option("data", "folder where datasets are found or downloaded to")
    download: bool = option(False, "download the dataset through torchvision when it is not on disk")
    image_size: int = option(0, "imagefolder only: resize images to this size (0 = 32)", valid=Range(0, 4096))

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(frozen=True)
class PartitionConfig:
    """How the training set is split over the nodes (non-IID schemes are seeded and deterministic)."""

    scheme: str = option("dirichlet", "split scheme", choices=("iid", "dirichlet", "classes-per-node",
                                                                  "label-disjoint", "mixed"))
    num_nodes: int = option(5, "number of nodes (clients)", valid=Range(1, 10 ** 6))
    alpha: float = option(0.5, "dirichlet: concentration; smaller is more skewed", valid=POSITIVE)
    min_size: int = option(10, "dirichlet: redraw until every node holds at least this many samples", valid=COUNT)
    classes_per_node: int = option(2, "classes-per-node: labels each node holds", valid=COUNT)
    seed: int = option(0, "random seed of the split", valid=SEED)

    def __post_init__(self) -> None:
        check_fields(self)


def field_key(cfg: Any, f: dataclasses.Field) -> str:
    """The key of field `f` in the dict form: its name, or, for a field of settings that belong to one
    choice (`option_table("method")`), the chosen value (`{"method": "fast", "fast": {...}}`, as
    the TOML table [synthesis.fast])."""
    return getattr(cfg, f.metadata["table_of"]) if "table_of" in f.metadata else f.name


def option_table(choice: str, help: str) -> Any:
    """A field holding the settings of the value chosen in field `choice` (a registered method's
    `Params`); in dicts and TOML it is the table named after that value. None: its defaults."""
    return dataclasses.field(default=None, metadata={"help": help, "table_of": choice})


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain values only, so configs go into JSON, HDF5 attributes and weights-only checkpoints. A
    class that writes its own form (`cfg.to_dict()`) is asked to."""
    if "to_dict" in vars(type(cfg)):
        return cfg.to_dict()
    return {field_key(cfg, f): to_dict(v) if dataclasses.is_dataclass(v) else copy.deepcopy(v)
            for f in dataclasses.fields(cfg) for v in [getattr(cfg, f.name)]}


def to_toml(tables: dict[str, Any]) -> str:
    """A config's `to_dict` form as TOML that its `from_toml` reads back to the same config: one table
    per top-level key, a nested dict as a subtable ([synthesis.fast]), a value that is not set (None)
    as a comment."""
    lines: list[str] = []

    def table(name: str, values: dict[str, Any]) -> None:
        lines.extend(["", f"[{name}]"] if lines else [f"[{name}]"])
        for key, value in values.items():
            if value is None:
                lines.append(f"# {key} = (not set)")
            elif not isinstance(value, dict):
                lines.append(f"{key} = {_toml_value(value)}")
        for key, value in values.items():
            if isinstance(value, dict):
                table(f"{name}.{key}", value)

    for name, values in tables.items():
        table(name, values)
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, float):
        return repr(value)
    return json.dumps(value) if isinstance(value, str) else str(value)


def from_dict(cls: type[T], values: dict[str, Any]) -> T:
    """Build `cls` from a dict (`to_dict`'s form; nested configs from nested dicts), refusing keys it
    does not know (and naming the ones it does). A class that reads its own form (`cls.from_dict`)
    is asked to."""
    if "from_dict" in vars(cls):
        return cls.from_dict(values)
    return from_fields(cls, values)


def from_fields(cls: type[T], values: dict[str, Any]) -> T:
    """`from_dict` by the fields of `cls` alone (what a class with its own `from_dict` builds on)."""
    names = {f.name for f in dataclasses.fields(cls)}
    values = {**{f.name: f.metadata["before"](values) if callable(f.metadata["before"]) else f.metadata["before"]
                 for f in dataclasses.fields(cls) if "before" in f.metadata and f.name not in values}, **values}
    extra = set(values) - names
    if extra:
        raise ConfigError(f"unknown {cls.__name__} field(s) {sorted(extra)}; known: {', '.join(sorted(names))}")
    hints = typing.get_type_hints(cls)
    for k, v in values.items():
        check_type(cls, k, hints[k], v)
    return cls(**{k: from_dict(hints[k], v) if dataclasses.is_dataclass(hints[k]) and isinstance(v, dict) else v
                  for k, v in values.items()})


def check_type(cls: type, name: str, expected: Any, value: Any) -> None:
    """A value read from a file must have its field's type (an int where a float is expected is fine;
    a bool is no number; an optional field may also be None)."""
    args = typing.get_args(expected)
    if type(None) in args and len(args) == 2:
        if value is None:
            return
        expected = next(t for t in args if t is not type(None))
    if expected not in (bool, int, float, str):
        return
    ok = isinstance(value, expected) and (expected is bool or not isinstance(value, bool))
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        ok = True
    if not ok:
        raise ConfigError(f"{cls.__name__}.{name} must be {expected.__name__}, got {value!r} "
                          f"({type(value).__name__})")


_CLICK_TYPES: dict[Any, Any] = {int: int, float: float, str: str}


def with_range(help_text: str, valid: Range | None) -> str:
    """A field's help with its valid range, as `--help` shows it."""
    return f"{help_text} ({valid})" if valid is not None else help_text


def click_options(cls: type, exclude: tuple[str, ...] = ()) -> Callable[[Callable], Callable]:
    """A decorator adding one click option per field of `cls` (`--field-name`), help from metadata.

    The command receives the values as keyword arguments named like the fields; build the config
    with `pick(cls, kwargs)`.
    """
    import click  # the library itself does not need click

    hints = typing.get_type_hints(cls)

    def decorate(fn: Callable) -> Callable:
        for f in reversed(dataclasses.fields(cls)):
            if f.name in exclude or "table_of" in f.metadata:
                continue
            flag = "--" + f.name.replace("_", "-")
            help_text = with_range(f.metadata.get("help", ""), f.metadata.get("valid"))
            if hints[f.name] is bool:
                fn = click.option(f"{flag}/--no-{flag[2:]}", f.name, default=f.default,
                                  show_default=True, help=help_text)(fn)
            else:
                choices = f.metadata.get("choices")
                kind = click.Choice(choices) if choices else _CLICK_TYPES[hints[f.name]]
                fn = click.option(flag, f.name, type=kind, default=f.default, show_default=True,
                                  help=help_text)(fn)
        return fn

    return decorate


def choice_options(choices: dict[str, Any], choice_flag: str) -> Callable[[Callable], Callable]:
    """A decorator adding one click option per setting of the choices' `Params` (e.g. every
    synthesis method's): one option per field name, its help naming the choices that take it and
    their defaults. Options default to None (not given), so `pick_choice_params` can refuse one that
    the chosen value does not take."""
    import click

    merged: dict[str, list[tuple[str, dataclasses.Field, type]]] = {}
    for name, cls in choices.items():
        hints = typing.get_type_hints(cls.Params)
        for f in dataclasses.fields(cls.Params):
            kind = hints[f.name]
            optional = [t for t in typing.get_args(kind) if t is not type(None)]
            merged.setdefault(f.name, []).append((name, f, optional[0] if optional else kind))

    def decorate(fn: Callable) -> Callable:
        for field_name, takers in reversed(list(merged.items())):
            flag = "--" + field_name.replace("_", "-")
            kind = takers[0][2]
            shown = [(name, "not set" if f.default is None else f.default) for name, f, _ in takers]
            same = len({repr(v) for _, v in shown}) == 1
            defaults = str(shown[0][1]) if same else ", ".join(f"{name} {v}" for name, v in shown)
            help_text = (f"{', '.join(name for name, _, _ in takers)} ({choice_flag}): "
                         f"{with_range(takers[0][1].metadata.get('help', ''), takers[0][1].metadata.get('valid'))} "
                         f"[default: {defaults}]")
            if kind is bool:
                fn = click.option(f"{flag}/--no-{flag[2:]}", field_name, default=None, help=help_text)(fn)
            else:
                fn = click.option(flag, field_name, type=_CLICK_TYPES[kind], default=None, help=help_text)(fn)
        return fn

    return decorate


def pick_choice_params(choices: dict[str, Any], chosen: str, values: dict[str, Any], choice_flag: str) -> Any:
    """The `Params` of the chosen value from the options `choice_options` added (None = not given):
    an option that the chosen value does not take is an error naming it and what it takes."""
    own = {f.name for f in dataclasses.fields(choices[chosen].Params)}
    every = {f.name for cls in choices.values() for f in dataclasses.fields(cls.Params)}
    given = {k: v for k, v in values.items() if k in every and v is not None}
    foreign = sorted(set(given) - own)
    if foreign:
        flags = ", ".join("--" + k.replace("_", "-") for k in sorted(own))
        raise ConfigError(f"--{foreign[0].replace('_', '-')} does not apply to {choice_flag} {chosen}; "
                          f"its options: {flags}")
    with as_options():
        return choices[chosen].Params(**given)


def load_toml(path: str | Path, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The tables of a TOML file, with `overrides` ("table.field=value", the value in TOML syntax,
    or a bare string) applied on top."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config {path} not found")
    try:
        data = tomllib.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start}); TOML files are UTF-8") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from e
    scalars = [k for k, v in data.items() if not isinstance(v, dict)]
    if scalars:
        raise ConfigError(f"{path}: {scalars[0]} must be a table ([{scalars[0]}]), got "
                          f"{data[scalars[0]]!r}; every setting belongs to a table")
    return apply_overrides(data, overrides)


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """`data` (tables of fields) with each "table.field=value" (or "table.subtable.field=value") of
    `overrides` set in it (the value in TOML syntax, or a bare string)."""
    for item in overrides:
        key, eq, text = item.partition("=")
        path = [part.strip() for part in key.split(".")]
        if not eq or len(path) < 2 or not all(path):
            raise ConfigError(f"--set {item!r}: expected TABLE.FIELD=VALUE, e.g. student.epochs=40 or "
                              f"synthesis.deepinversion.iterations=200")
        try:
            value = tomllib.loads(f"v = {text.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = text.strip()  # a bare word: a string
        table = data
        for part in path[:-1]:
            table = table.setdefault(part, {})
            if not isinstance(table, dict):
                raise ConfigError(f"--set {item!r}: {part} is a field, not a table")
        table[path[-1]] = value
    return data


def read_toml_tables(path: str | Path, defaults: dict[str, Any], overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Read a TOML file of tables named like the keys of `defaults` (config instances): see `from_tables`."""
    return from_tables(load_toml(path, overrides), defaults, str(path))


@contextlib.contextmanager
def table(name: str) -> Iterator[None]:
    """A config error raised while a TOML table is read names the table: `[teachers] momentum must be ...`."""
    try:
        yield
    except ConfigError as e:
        if str(e).startswith("["):  # a nested table named itself already
            raise
        raise ConfigError(f"[{name}] {e}") from e


def from_tables(data: dict[str, Any], defaults: dict[str, Any], source: str = "config") -> dict[str, Any]:
    """Configs from tables named like the keys of `defaults` (config instances); each table
    overrides fields of its default, and unknown tables or fields are errors naming the known ones.
    A config class that reads its own form (`from_dict(values, strict)`) reads the table as written,
    strictly (its defaults are the class's own)."""
    extra = set(data) - set(defaults)
    if extra:
        raise ConfigError(f"{source}: unknown table(s) {sorted(extra)}; known: {', '.join(defaults)}")
    out = {}
    for name, d in defaults.items():
        given = data.get(name, {})
        if not isinstance(given, dict):
            raise ConfigError(f"{source}: {name} must be a table ([{name}]), got {given!r}")
        with table(name):
            if "from_dict" in vars(type(d)):
                out[name] = type(d).from_dict(given, strict=True) if given else d
            else:
                out[name] = from_dict(type(d), {**to_dict(d), **given})
    return out


def pick(cls: type[T], values: dict[str, Any]) -> T:
    """Build `cls` from the entries of `values` that are its fields (the rest are ignored): a CLI
    command's options, so an invalid field is named as its option (`--momentum must be ...`)."""
    names = {f.name for f in dataclasses.fields(cls)}
    with as_options():
        return cls(**{k: v for k, v in values.items() if k in names})


@contextlib.contextmanager
def as_options() -> Iterator[None]:
    """An invalid field of a config built from CLI options is named as its option."""
    try:
        yield
    except FieldError as e:
        raise ConfigError(f"--{e.field.replace('_', '-')} {e.problem}") from e


