"""Model checkpoints: a plain dict of tensors and JSON-like values, loaded weights-only.

A teacher checkpoint comes from a node and is untrusted: it is read with
`torch.load(weights_only=True)` (no code runs), then checked for format, model, shapes and
class count before any model is built from it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Collection

import torch
from torch import nn

from . import __version__
from .data.datasets import DatasetInfo
from .errors import CheckpointError, ConfigError
from .models import MODELS, build_model, is_factory, place
from .runtime import read_torch, save_torch

TEACHER = "fedinv.teacher"
STUDENT = "fedinv.student"
GLOBAL = "fedinv.global"  # the global model of a multi-round run
MODEL_KINDS = (TEACHER, STUDENT, GLOBAL)
SCHEMA_VERSION = 1
MAX_LABEL_COUNT = 10 ** 12  # samples of one class on one node: far above any real dataset, far below overflow


def is_label_count(c: Any) -> bool:
    """A node's number of samples of one class: an integer in [0, MAX_LABEL_COUNT] (a claim of 10^30 used to
    overflow the ensemble's weights)."""
    return isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= MAX_LABEL_COUNT


@dataclass(frozen=True)
class ModelCheckpoint:
    """What a checkpoint holds. `model` = {name, in_channels, num_classes, image_size}."""

    kind: str
    model: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    label_counts: list[int] | None = None
    config: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. node index, dataset facts, partition hash
    fedinv_version: str = __version__
    trust: tuple[str, ...] = field(default=(), compare=False)  # module:factory models it may build (not saved)

    @property
    def num_classes(self) -> int:
        return int(self.model["num_classes"])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        m = self.model
        return (int(m["in_channels"]), int(m["image_size"]), int(m["image_size"]))

    @classmethod
    def of(cls, kind: str, name: str, info: DatasetInfo, state_dict: dict[str, torch.Tensor], *,
           extra: dict[str, Any] | None = None, **fields: Any) -> "ModelCheckpoint":
        """The checkpoint of registry model `name` trained on dataset `info`: the weights go to the
        CPU, and `extra["dataset"]` records the dataset facts (normalization, class names) every
        reader of a checkpoint relies on."""
        return cls(kind, model_spec(name, info), {k: v.detach().cpu().contiguous() for k, v in state_dict.items()},
                   extra={**(extra or {}), "dataset": asdict(info)}, **fields)

    @property
    def dataset_info(self) -> DatasetInfo | None:
        """The dataset facts the checkpoint records, or None (an older or foreign file)."""
        d = self.extra.get("dataset")
        if not isinstance(d, dict):
            return None
        try:
            return DatasetInfo(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})
        except TypeError:  # fields this fedinv does not know: foreign
            return None

    def digest(self) -> str:
        """sha256 of what the model is: its description, weights, label counts and dataset facts.

        Not of the file: training metrics record wall times, so identical runs write different
        bytes, while this digest is the same for identical weights (stores record it per teacher).
        """
        h = hashlib.sha256(json.dumps({"format": self.kind, "model": self.model, "label_counts": self.label_counts,
                                       "dataset": self.extra.get("dataset")}, sort_keys=True).encode())
        for name in sorted(self.state_dict):
            t = self.state_dict[name].detach().cpu().contiguous()
            h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()

    def to_dict(self) -> dict[str, Any]:
        return {"format": self.kind, "schema_version": SCHEMA_VERSION, "fedinv_version": self.fedinv_version,
                "model": dict(self.model), "state_dict": self.state_dict, "label_counts": self.label_counts,
                "config": self.config, "seed": self.seed, "metrics": self.metrics, "extra": self.extra}

    def build(self, device: torch.device | str = "cpu") -> nn.Module:
        """Construct the model (registry, or a trusted factory) and load the weights (strict); returned
        in eval mode."""
        m = self.model
        module = build_model(m["name"], m["in_channels"], m["num_classes"], m["image_size"], self.trust)
        load_weights(module, self.state_dict, f"weights do not fit model {m['name']!r}")
        return place(module, device).eval()


def weight_misfit(expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> str | None:
    """The keys of `state` that are missing, unexpected or mis-shaped against `expected` (a model's
    state_dict), as one line; None when it fits."""
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    shaped = [k for k in expected if k in state and expected[k].shape != state[k].shape]
    parts = [f"{label} {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
             for label, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", shaped)) if keys]
    return "; ".join(parts) or None


def non_finite(state: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating tensors of a state_dict holding NaN or inf."""
    return [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]


def load_weights(module: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """load_state_dict (strict); a misfit is a `CheckpointError` "{what}: " + `weight_misfit`."""
    misfit = weight_misfit(module.state_dict(), state)
    if misfit:
        raise CheckpointError(f"{what}: {misfit}")
    module.load_state_dict(state, strict=True)


def model_spec(name: str, info: DatasetInfo) -> dict[str, Any]:
    """The `model` entry of a checkpoint: registry name and what it was built for."""
    return {"name": name, "in_channels": info.channels, "num_classes": info.num_classes,
            "image_size": info.image_size}


def save_checkpoint(ckpt: ModelCheckpoint, path: str | Path) -> None:
    """Write atomically: a killed job never leaves a half-written checkpoint under `path`."""
    save_torch(ckpt.to_dict(), path)


def load_checkpoint(path: str | Path, *, kind: str | tuple[str, ...] = TEACHER, num_classes: int | None = None,
                    image_shape: tuple[int, int, int] | None = None, trust: Collection[str] = ()) -> ModelCheckpoint:
    """Read and validate a checkpoint; every problem is a `CheckpointError` naming the file.

    num_classes / image_shape, when given, must match what the checkpoint's model was built for.
    A model that is a `module:factory` path (`fedinv import-teacher`) is accepted only if `trust`
    names it: building it runs that code.
    """
    path = Path(path)
    raw = _read(path)
    kinds = (kind,) if isinstance(kind, str) else kind
    if not isinstance(raw, dict) or raw.get("format") not in kinds:
        found = raw.get("format") if isinstance(raw, dict) else type(raw).__name__
        raise CheckpointError(f"{path} is not a {' or '.join(kinds)} checkpoint (found format {found!r})")
    if raw.get("schema_version") != SCHEMA_VERSION:
        raise CheckpointError(f"{path}: schema_version {raw.get('schema_version')!r}, this fedinv reads "
                              f"{SCHEMA_VERSION}")
    model, state = _check_fields(path, raw, trust)
    ckpt = ModelCheckpoint(raw["format"], model, state, raw.get("label_counts"), raw.get("config") or {},
                           raw.get("seed"), raw.get("metrics") or {}, raw.get("extra") or {},
                           raw.get("fedinv_version", "?"), tuple(trust))
    if num_classes is not None and ckpt.num_classes != num_classes:
        raise CheckpointError(f"{path}: model has {ckpt.num_classes} classes, expected {num_classes}")
    if image_shape is not None and ckpt.image_shape != tuple(image_shape):
        raise CheckpointError(f"{path}: model takes input {ckpt.image_shape}, expected {tuple(image_shape)}")
    if ckpt.label_counts is not None and len(ckpt.label_counts) != ckpt.num_classes:
        raise CheckpointError(f"{path}: {len(ckpt.label_counts)} label counts for {ckpt.num_classes} classes")
    # Shapes are checked against the model built on the meta device (no memory, no init): a
    # mismatch is an error here, not later, and callers build the real model once.
    try:
        with torch.device("meta"):
            expected = build_model(model["name"], model["in_channels"], model["num_classes"],
                                   model["image_size"], trust).state_dict()
    except ConfigError as e:
        raise CheckpointError(f"{path}: {e}") from e
    misfit = weight_misfit(expected, state)
    if misfit:
        raise CheckpointError(f"{path}: weights do not fit model {model['name']!r}: {misfit}")
    return ckpt


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A `state_dict` saved with `torch.save` (or a dict holding one under "state_dict"), read
    weights-only: a file from elsewhere is untrusted too."""
    path = Path(path)
    raw = _read(path)
    if isinstance(raw, dict) and isinstance(raw.get("state_dict"), dict):
        raw = raw["state_dict"]
    if not isinstance(raw, dict) or not raw or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                       for k, v in raw.items()):
        raise CheckpointError(f"{path} holds no state_dict (a dict of parameter names to tensors)")
    return raw


def _read(path: Path) -> Any:
    return read_torch(path, "checkpoint")


def _check_fields(path: Path, raw: dict[str, Any],
                  trust: Collection[str]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The model description and the weights of a checkpoint dict, checked for types and values."""
    model = raw.get("model")
    keys = {"name", "in_channels", "num_classes", "image_size"}
    if not isinstance(model, dict) or not keys <= set(model):
        raise CheckpointError(f"{path}: model description missing or incomplete (needs {sorted(keys)})")
    wrong_type = [k for k in ("in_channels", "num_classes", "image_size")
                  if not isinstance(model[k], int) or isinstance(model[k], bool) or model[k] < 1]
    if wrong_type or not isinstance(model["name"], str):
        bad = wrong_type[0] if wrong_type else "name"
        raise CheckpointError(f"{path}: model.{bad} = {model[bad]!r} is not a "
                              f"{'positive integer' if wrong_type else 'string'}")
    if is_factory(model["name"]):
        if model["name"] not in trust:
            raise CheckpointError(f"{path}: model {model['name']!r} is Python code named by the file; fedinv runs it "
                                  f"only when you trust it: pass --trust-model {model['name']}")
    elif model["name"] not in MODELS:
        raise CheckpointError(f"{path}: unknown model {model['name']!r}; known: {', '.join(sorted(MODELS))}")
    state = raw.get("state_dict")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: state_dict missing or not a dict of tensors")
    not_finite = non_finite(state)
    if not_finite:
        raise CheckpointError(f"{path}: non-finite weights (NaN or inf) in {', '.join(not_finite[:3])}: the model "
                              f"that wrote it diverged")
    counts = raw.get("label_counts")
    if counts is not None and (not isinstance(counts, list) or not all(is_label_count(c) for c in counts)):
        raise CheckpointError(f"{path}: label_counts must be a list of integers in [0, 10^12]")
    return model, state
