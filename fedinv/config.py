"""Typed, frozen configs of the one-shot stages, their dict/TOML round trip, and their click options
(the multi-round mode's configs live in `fedinv.federated.config`).

Each field carries its help text in `metadata["help"]`: the same text documents the library,
fills `--help`, and travels (as values) inside every artifact the stage writes.
"""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

from .errors import ConfigError
from .train.schedule import SCHEDULES

T = TypeVar("T")


def option(default: Any, help: str, choices: tuple[str, ...] | None = None, runtime: bool = False,
           before: Any = dataclasses.MISSING) -> Any:
    """A dataclass field with help text (and optional valid choices) for the CLI and docs.

    `runtime=True` marks a field that changes where or how fast a run computes, not what: a saved
    run may be continued with another value (`fedinv.train.resume.changes`). `before`: what a
    saved config without this field stands for, when the field was added with a default other
    than the behaviour before it; a value, or a function of the saved dict (`from_dict` fills it in)."""
    metadata = {"help": help, "choices": choices, "runtime": runtime}
    if before is not dataclasses.MISSING:
        metadata["before"] = before
    return dataclasses.field(default=default, metadata=metadata)


def at_least(cfg: Any, minimum: int, *names: str) -> None:
    for name in names:
        if getattr(cfg, name) < minimum:
            raise ConfigError(f"{name} must be >= {minimum}, got {getattr(cfg, name)}")


def check_choice(cfg: Any, name: str) -> None:
    meta = next(f for f in dataclasses.fields(cfg) if f.name == name).metadata
    value = getattr(cfg, name)
    if meta.get("choices") and value not in meta["choices"]:
        raise ConfigError(f"{name}={value!r} is not valid; choose one of: {', '.join(meta['choices'])}")


@dataclass(frozen=True)
class DataConfig:
    """Which dataset, and where it lives."""

    dataset: str = option("fashion-mnist", "dataset name: fashion-mnist, mnist, cifar10, cifar100, svhn, "
                          "imagefolder (a folder with train/ and test/ class folders, given by --data-root), "
                          "synthetic-tiny (generated, for tests)")
    data_root: str = option("data", "folder where datasets are found or downloaded to")
    download: bool = option(False, "download the dataset through torchvision when it is not on disk")
    image_size: int = option(0, "imagefolder only: resize images to this size (0 = 32)")


@dataclass(frozen=True)
class PartitionConfig:
    """How the training set is split over the nodes (non-IID schemes are seeded and deterministic)."""

    scheme: str = option("dirichlet", "split scheme", choices=("iid", "dirichlet", "classes-per-node",
                                                                  "label-disjoint", "mixed"))
    num_nodes: int = option(5, "number of nodes (clients)")
    alpha: float = option(0.5, "dirichlet: concentration; smaller is more skewed")
    min_size: int = option(10, "dirichlet: redraw until every node holds at least this many samples")
    classes_per_node: int = option(2, "classes-per-node: labels each node holds")
    seed: int = option(0, "random seed of the split")

    def __post_init__(self) -> None:
        check_choice(self, "scheme")
        at_least(self, 1, "num_nodes", "min_size", "classes_per_node")
        if self.scheme == "dirichlet" and not self.alpha > 0:
            raise ConfigError(f"dirichlet alpha must be > 0, got {self.alpha}")


@dataclass(frozen=True)
class TeacherConfig:
    """How each node trains its teacher."""

    model: str = option("bncnn", "model name from the registry (see `fedinv models`)")
    epochs: int = option(15, "training epochs over the node's split")
    batch_size: int = option(64, "minibatch size")
    lr: float = option(0.05, "SGD learning rate")
    momentum: float = option(0.9, "SGD momentum")
    weight_decay: float = option(5e-4, "SGD weight decay")
    schedule: str = option("cosine", "learning-rate schedule over all steps", choices=SCHEDULES)
    augment: bool = option(True, "light augmentation: random crop with padding, and horizontal flip "
                                 "where the dataset allows it")
    same_init: bool = option(True, "start every node from the same initialization (one-shot FedAvg baseline)")
    precision: str = option("auto", "mixed precision: auto (fp16 on CUDA, fp32 on CPU), fp32, bf16, fp16",
                            choices=("auto", "fp32", "bf16", "fp16"))
    device: str = option("auto", "auto, cpu, cuda, cuda:N or mps", runtime=True)
    seed: int = option(0, "random seed of initialization and data order")

    def __post_init__(self) -> None:
        for name in ("schedule", "precision"):
            check_choice(self, name)
        at_least(self, 1, "epochs", "batch_size")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain values only, so configs go into JSON, HDF5 attributes and weights-only checkpoints."""
    return dataclasses.asdict(cfg)


def from_dict(cls: type[T], values: dict[str, Any]) -> T:
    """Build `cls` from a dict (`to_dict`'s form; nested configs from nested dicts), refusing keys it
    does not know (and naming the ones it does)."""
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
    a bool is no number)."""
    if expected not in (bool, int, float, str):
        return
    ok = isinstance(value, expected) and (expected is bool or not isinstance(value, bool))
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        ok = True
    if not ok:
        raise ConfigError(f"{cls.__name__}.{name} must be {expected.__name__}, got {value!r} "
                          f"({type(value).__name__})")


_CLICK_TYPES: dict[Any, Any] = {int: int, float: float, str: str}


def click_options(cls: type, exclude: tuple[str, ...] = ()) -> Callable[[Callable], Callable]:
    """A decorator adding one click option per field of `cls` (`--field-name`), help from metadata.

    The command receives the values as keyword arguments named like the fields; build the config
    with `pick(cls, kwargs)`.
    """
    import click  # the library itself does not need click

    hints = typing.get_type_hints(cls)

    def decorate(fn: Callable) -> Callable:
        for f in reversed(dataclasses.fields(cls)):
            if f.name in exclude:
                continue
            flag = "--" + f.name.replace("_", "-")
            help_text = f.metadata.get("help", "")
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


def load_toml(path: str | Path, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The tables of a TOML file, with `overrides` ("table.field=value", the value in TOML syntax,
    or a bare string) applied on top."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config {path} not found")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from e
    return apply_overrides(data, overrides)


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """`data` (tables of fields) with each "table.field=value" of `overrides` set in it (the value in
    TOML syntax, or a bare string)."""
    for item in overrides:
        key, eq, text = item.partition("=")
        table, dot, name = key.strip().partition(".")
        if not eq or not dot or not table or not name:
            raise ConfigError(f"--set {item!r}: expected TABLE.FIELD=VALUE, e.g. synthesis.iterations=200")
        try:
            value = tomllib.loads(f"v = {text.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = text.strip()  # a bare word: a string
        data.setdefault(table, {})[name] = value
    return data


def read_toml_tables(path: str | Path, defaults: dict[str, Any], overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Read a TOML file of tables named like the keys of `defaults` (config instances); each table
    overrides fields of its default, and unknown tables or fields are errors naming the known ones."""
    data = load_toml(path, overrides)
    extra = set(data) - set(defaults)
    if extra:
        raise ConfigError(f"{path}: unknown table(s) {sorted(extra)}; known: {', '.join(defaults)}")
    return {name: from_dict(type(d), {**to_dict(d), **data.get(name, {})}) for name, d in defaults.items()}


def pick(cls: type[T], values: dict[str, Any]) -> T:
    """Build `cls` from the entries of `values` that are its fields (the rest are ignored)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in names})


@dataclass(frozen=True)
class SynthesisConfig:
    """How images are synthesized from the teachers: one objective (sampled teachers, head masking,
    CE, BN statistics, priors, competition), three ways to descend it (`method`).

    Defaults follow the DeepInversion reference code and one-shot-dataset-distillation.txt:
    batch 256, Adam lr 0.1 with a cosine schedule, a_bn 10, a_tv(l2) 1e-3, a_l2 0, a_comp 10,
    3 teachers per step, jitter 2 px; the generator methods' from Fast-Datafree (Adam betas 0.5,
    0.999; 5 steps at lr 3e-3, z at 1e-2, meta lr = steps x lr_g; BN momentum 0.9) and DENSE
    (30 steps at lr 1e-3).
    """

    method: str = option("deepinversion", "deepinversion: every batch's pixels optimized from noise for "
                         "--iterations steps; fast: a generator whose meta-learned start is refined for --steps "
                         "steps per batch (Fast-Datafree); dense: one generator trained on, batch after batch, "
                         "for --steps steps each (DENSE)", choices=("deepinversion", "fast", "dense"))
    num_images: int = option(2560, "how many images to synthesize in all")
    batch_size: int = option(256, "images optimized together (one batch = one Adam run)")
    iterations: int = option(1000, "deepinversion: gradient steps on the pixels per batch")
    lr: float = option(0.1, "deepinversion: Adam learning rate of the pixels (cosine decay to 0)")
    steps: int = option(0, "fast, dense: generator steps per batch; 0 = the method's default (fast 5, dense 30)")
    lr_g: float = option(0.0, "fast, dense: Adam learning rate of the generator within a batch; 0 = the "
                              "method's default (fast 3e-3, dense 1e-3)")
    lr_z: float = option(0.01, "fast, dense: Adam learning rate of the batch's latent codes (0 = codes fixed)")
    meta_lr: float = option(0.0, "fast: Adam learning rate of the Reptile step that moves the generator's "
                                 "start towards each refined generator; 0 = steps x lr_g (Fast-Datafree)")
    bn_momentum: float = option(0.9, "fast, dense: BN statistics compared as (1 - m) x this batch's + m x a "
                                     "running average over past batches (Fast-Datafree); 0 = each batch alone")
    nz: int = option(100, "fast, dense: size of the generator's latent code")
    generator_width: int = option(64, "fast, dense: channels of the generator's first feature map (halved at the "
                                      "next), as Fast-Datafree and DENSE; 128 costs 1.6x the time (docs/results.md)",
                                  before=lambda saved: 128 if saved.get("method") in ("fast", "dense") else 64)
    conditional: bool = option(False, "fast, dense: the generator also takes the target label as an input "
                                      "(off: only the code z, as the references' generators; on, it collapsed "
                                      "to one image per class, docs/results.md)")
    teachers_per_step: int = option(3, "teachers sampled at each step and averaged (Algorithm 1); "
                                       "0 = all; 1 = cycling (batch b uses teacher b mod N throughout)")
    fixed_teachers: bool = option(False, "sample the teachers_per_step teachers once per batch and keep them for "
                                         "all its steps, instead of at every step (the report's open idea, §VI)")
    label_sampler: str = option("uniform", "target labels: uniform, proportional (to the nodes' class counts, "
                                "FedFTG), balanced (equal share per teacher over the labels it knows)",
                                choices=("uniform", "proportional", "balanced"))
    head_mask: bool = option(True, "leave out each teacher's logits for labels it never saw")
    weighted_ce: bool = option(False, "weight each teacher's CE by the share of the label in its data (eq. 5)")
    a_bn: float = option(10.0, "weight of the BN-statistic loss")
    first_bn_multiplier: float = option(1.0, "extra factor on the first BN layer's term")
    a_tv_l1: float = option(0.0, "weight of the l1 total variation prior")
    a_tv_l2: float = option(1e-3, "weight of the l2 total variation prior")
    a_l2: float = option(0.0, "weight of the image l2 prior")
    a_comp: float = option(10.0, "weight of the Jensen-Shannon competition term (adaptive mode, with a student)")
    comp_temperature: float = option(3.0, "temperature of the competition term")
    jitter: int = option(2, "random roll of the images by up to this many pixels per step")
    flip: bool = option(True, "random horizontal flip per step (off for datasets where flips change labels)")
    precision: str = option("auto", "mixed precision: auto (fp16 on CUDA, fp32 on CPU), fp32, bf16, fp16",
                            choices=("auto", "fp32", "bf16", "fp16"))
    batched: str = option("auto", "multi-teacher path: batched (one vmapped call for teachers of one "
                          "architecture), loop (per teacher), auto (batched on CUDA, loop on CPU where it "
                          "measured faster)", choices=("auto", "batched", "loop"), runtime=True)
    device: str = option("auto", "auto, cpu, cuda, cuda:N or mps", runtime=True)
    seed: int = option(0, "random seed; batch b is drawn from (seed, b), so it can be regenerated exactly")

    def __post_init__(self) -> None:
        for name in ("method", "label_sampler", "precision", "batched"):
            check_choice(self, name)
        at_least(self, 1, "num_images", "batch_size", "iterations", "nz")
        at_least(self, 0, "teachers_per_step", "jitter", "steps")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        for name in ("lr_g", "lr_z", "meta_lr"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.bn_momentum < 1:
            raise ConfigError(f"bn_momentum must be in [0, 1), got {self.bn_momentum}")
        if self.method != "deepinversion" and self.bn_momentum and self.batched == "batched":
            raise ConfigError("bn_momentum runs on the looped multi-teacher path: use --batched loop (or auto), "
                              "or --bn-momentum 0")

    @property
    def per_batch(self) -> bool:
        """Whether every batch is drawn from (seed, batch) alone (deepinversion); the generator
        methods carry a generator from batch to batch."""
        return self.method == "deepinversion"


@dataclass(frozen=True)
class StudentConfig:
    """How the student learns from the synthetic store (one-shot-dataset-distillation.txt §III-A)."""

    model: str = option("bncnn", "student model name from the registry")
    epochs: int = option(30, "passes over the store")
    batch_size: int = option(256, "minibatch size")
    lr: float = option(0.1, "SGD learning rate")
    momentum: float = option(0.9, "SGD momentum")
    weight_decay: float = option(5e-4, "SGD weight decay")
    schedule: str = option("cosine", "learning-rate schedule", choices=SCHEDULES)
    kd_weight: float = option(1.0, "weight of the KD loss against the teacher ensemble")
    ce_weight: float = option(0.0, "weight of the CE loss on the stored target labels")
    temperature: float = option(4.0, "KD temperature (kd_form soft)")
    kd_form: str = option("soft", "KD targets' form: soft (Hinton KD against the ensemble's probabilities at "
                          "temperature), hard (cross-entropy on the ensemble's label of each image)",
                          choices=("soft", "hard"))
    kd_source: str = option("auto", "KD targets: teachers (ensemble on the augmented batch), soft-labels (stored "
                            "in the store), auto (teachers when given)", choices=("auto", "teachers", "soft-labels"))
    augment: bool = option(True, "random crop and (where the dataset allows) flip of the synthetic images")
    mixup: bool = option(False, "mix each synthetic image with another of the batch (weight ~ U(0, 1)) before "
                                "KD; the teachers label the mixed images, so the student is queried between "
                                "the synthesized points (needs KD from the teachers and ce_weight 0)")
    local_weight: float = option(0.0, "weight of CE on a node's own real data (with --local-node)")
    adaptive_batches: int = option(0, "adaptive mode: new batches synthesized against the current student and "
                                      "appended to the store every --adaptive-every epochs (0 = off)")
    adaptive_every: int = option(1, "adaptive mode: epochs between rounds of new batches (first round at epoch 1)")
    buffer_batches: int = option(16, "store reading: batches read and shuffled together (memory bound)")
    precision: str = option("auto", "mixed precision: auto (fp16 on CUDA, fp32 on CPU), fp32, bf16, fp16",
                            choices=("auto", "fp32", "bf16", "fp16"))
    device: str = option("auto", "auto, cpu, cuda, cuda:N or mps", runtime=True)
    seed: int = option(0, "random seed of initialization and data order")

    def __post_init__(self) -> None:
        for name in ("schedule", "kd_form", "kd_source", "precision"):
            check_choice(self, name)
        at_least(self, 1, "epochs", "batch_size", "buffer_batches", "adaptive_every")
        at_least(self, 0, "kd_weight", "ce_weight", "local_weight", "adaptive_batches")
        if self.kd_weight == 0 and self.ce_weight == 0 and self.local_weight == 0:
            raise ConfigError("kd_weight, ce_weight and local_weight are all 0: nothing to learn from")
        if not self.temperature > 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature}")
        if self.mixup and (self.ce_weight or self.kd_source == "soft-labels"):
            raise ConfigError("mixup needs KD targets from the teachers (kd_source auto or teachers) and ce_weight 0: "
                              "stored labels do not describe mixed images")
