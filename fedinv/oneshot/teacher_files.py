"""Teachers as the server receives them: a folder of `node-K.pt` checkpoints (with label counts
and dataset facts), or models held in memory (the Python API), validated together. The one place
that finds, loads and checks teachers."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Collection, Sequence, Union

import torch
from torch import nn

from ..checkpoint import (MAX_LABEL_COUNT, TEACHER, ModelCheckpoint, is_label_count, load_checkpoint, load_weights,
                          non_finite, read_weights, save_checkpoint)
from ..data.datasets import DatasetInfo
from ..errors import ConfigError, RunStateError
from ..models import build_model_for
from ..runtime import sha256_file


@dataclass(frozen=True)
class TeacherFolder:
    """Validated teacher checkpoints (in node order), their files, and the dataset they share."""

    checkpoints: list[ModelCheckpoint]
    paths: list[Path]
    info: DatasetInfo

    def hashes(self) -> dict[str, str]:
        """file name -> `ModelCheckpoint.digest`, recorded in every store made from these teachers
        (the same for identical teachers, however often they are written)."""
        return {p.name: c.digest() for p, c in zip(self.paths, self.checkpoints)}

    def file_hashes(self) -> dict[str, str]:
        """file name -> sha256 of the file: what stores recorded before `hashes`."""
        return {p.name: sha256_file(p) for p in self.paths}

    def counts(self) -> torch.Tensor:
        """Label counts [N, K]."""
        return torch.tensor([c.label_counts for c in self.checkpoints])

    def build(self, device: torch.device | str) -> list[nn.Module]:
        return [c.build(device) for c in self.checkpoints]


@dataclass(frozen=True)
class TeacherModels:
    """Teachers held in memory: any classifiers (with BatchNorm layers for the BN term), each with
    the label counts of the data it was trained on, and the dataset facts (shape, classes,
    normalization) their inputs follow. `synthesize` and `train_student` take them as they take a
    folder, and take the modules over (frozen, in eval mode, moved to the run's device)."""

    models: Sequence[nn.Module]
    label_counts: Sequence[Sequence[int]]
    info: DatasetInfo

    def __post_init__(self) -> None:
        if not self.models or len(self.models) != len(self.label_counts):
            raise ConfigError(f"{len(self.models)} teacher models but {len(self.label_counts)} label counts")
        for i, (model, counts) in enumerate(zip(self.models, self.label_counts)):
            check_teacher_model(model, counts, self.info, f"teacher {i}")

    def counts(self) -> torch.Tensor:
        return torch.tensor([list(c) for c in self.label_counts])

    def build(self, device: torch.device | str) -> list[nn.Module]:
        return [m.to(device).eval() for m in self.models]

    def hashes(self) -> dict[str, str]:
        """"model-i" -> digest of its weights, label counts and dataset facts (as `ModelCheckpoint.digest`)."""
        return {f"model-{i}": ModelCheckpoint(TEACHER, {"name": type(m).__qualname__}, m.state_dict(), list(c),
                                              extra={"dataset": asdict(self.info)}).digest()
                for i, (m, c) in enumerate(zip(self.models, self.label_counts))}

    file_hashes = hashes  # no files: nothing recorded otherwise


Teachers = Union[TeacherFolder, TeacherModels]


def check_teacher_model(model: nn.Module, counts: Sequence[int], info: DatasetInfo, name: str) -> None:
    """A model fit to be a teacher on `info`'s images: finite weights, K non-negative label counts,
    and logits [B, K] for its inputs. (Synthesis also needs BatchNorm layers unless its BN term is
    off: `methods.make_synthesizer` says so.)"""
    if len(counts) != info.num_classes or not all(is_label_count(c) for c in counts):
        raise ConfigError(f"{name}: label counts must be {info.num_classes} integers in [0, 10^12], "
                          f"got {list(counts)}")
    bad = non_finite(model.state_dict())
    if bad:
        raise ConfigError(f"{name}: non-finite weights (NaN or inf) in {', '.join(bad[:3])}")
    was_training = model.training
    try:
        with torch.no_grad():
            param = next(model.parameters(), None)
            x = torch.zeros(2, *info.image_shape, device=param.device if param is not None else "cpu")
            out = model.eval()(x)
    except Exception as e:  # the model's own code rejects the input shape
        raise ConfigError(f"{name} does not take {info.name} images {tuple(info.image_shape)}: "
                          f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, info.num_classes):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(f"{name} gives outputs {shape} for a batch of 2; a teacher gives logits "
                          f"[B, {info.num_classes}] for {info.name}'s {info.num_classes} classes")


def as_teachers(teachers: str | Path | Teachers, trust: Collection[str] = ()) -> Teachers:
    """Teachers already loaded as they are; a path is loaded as a teachers folder."""
    return teachers if isinstance(teachers, (TeacherFolder, TeacherModels)) else load_teacher_folder(teachers, trust)


def node_index(path: Path) -> int | None:
    """K of a `node-K.pt` file name (None for another name)."""
    k = path.stem.partition("-")[2]
    return int(k) if k.isdigit() else None


def teacher_paths(folder: str | Path) -> list[Path]:
    """The `node-K.pt` files of a folder, in node order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"teachers folder {folder} not found; train teachers with `fedinv train-teachers`")
    paths = sorted((p for p in folder.glob("node-*.pt") if node_index(p) is not None), key=node_index)
    if not paths:
        raise ConfigError(f"no node-*.pt teacher checkpoints in {folder}")
    return paths


def load_teacher_checkpoints(paths: Sequence[str | Path], trust: Collection[str] = ()) -> list[ModelCheckpoint]:
    """Load teacher checkpoints and check they agree on classes and input shape (`trust`: the
    `module:factory` models they may name, see `load_checkpoint`)."""
    ckpts = [load_checkpoint(p, trust=trust) for p in paths]
    if not ckpts:
        raise ConfigError("no teacher checkpoints (node-*.pt) found")
    first = ckpts[0]
    for p, c in zip(paths, ckpts):
        if c.num_classes != first.num_classes or c.image_shape != first.image_shape:
            raise ConfigError(f"{p}: {c.num_classes} classes, input {c.image_shape}; but {paths[0]}: "
                              f"{first.num_classes} classes, input {first.image_shape}")
        if c.label_counts is None:
            raise ConfigError(f"{p} has no label counts; it is not a node's teacher checkpoint")
    return ckpts


def load_teacher_folder(folder: str | Path, trust: Collection[str] = ()) -> TeacherFolder:
    """Load and validate every `node-K.pt` in `folder` (same classes, input shape and dataset)."""
    paths = teacher_paths(folder)
    ckpts = load_teacher_checkpoints(paths, trust)
    infos = [c.dataset_info for c in ckpts]
    if any(i is None for i in infos):
        bad = paths[[i is None for i in infos].index(True)]
        raise ConfigError(f"{bad} records no dataset facts (normalization); it was not written by train-teachers")
    if any((i.mean, i.std) != (infos[0].mean, infos[0].std) for i in infos):
        raise ConfigError(f"teachers in {folder} were trained with different input normalizations")
    info = infos[0]
    if ckpts[0].image_shape != info.image_shape:
        raise ConfigError(f"{paths[0]}: model input {ckpts[0].image_shape} does not match its dataset "
                          f"{info.name} {info.image_shape}")
    return TeacherFolder(ckpts, paths, info)


def import_teacher(model: str, weights: str | Path, label_counts: Sequence[int], info: DatasetInfo,
                   folder: str | Path, node: int | None = None) -> Path:
    """Write a classifier trained outside fedinv as teacher `folder/node-K.pt` and return its path.

    model: a registry name or a `module:factory` path (imported and called here: the caller names
    it, so it is trusted; readers of the file must trust it again, see `load_checkpoint`).
    weights: its state_dict file (read weights-only); label_counts: the samples per class it was
    trained on; info: the dataset facts its inputs follow (shape, classes, normalization). The
    model is checked as a teacher (BatchNorm, finite weights, logits [B, K]) before anything is
    written; node: K (default: the next free index in the folder).
    """
    state = read_weights(weights)
    module = build_model_for(model, info, trust=(model,), adapt=False)  # the weights say what the model is
    load_weights(module, state, f"{weights}: weights do not fit model {model!r}")
    counts = [int(c) for c in label_counts]
    check_teacher_model(module, counts, info, f"model {model!r} with {Path(weights).name}")
    folder = Path(folder)
    taken = {k for k in map(node_index, folder.glob("node-*.pt")) if k is not None}
    node = (max(taken) + 1 if taken else 0) if node is None else node
    if node < 0:
        raise ConfigError(f"--node must be >= 0, got {node}")
    path = folder / f"node-{node}.pt"
    if path.exists():
        raise RunStateError(f"{path} exists; choose another --node (taken: {sorted(taken)})")
    ckpt = ModelCheckpoint.of(TEACHER, model, info, module.state_dict(), label_counts=counts,
                              extra={"node": node, "num_samples": sum(counts), "imported_from": Path(weights).name})
    folder.mkdir(parents=True, exist_ok=True)
    save_checkpoint(ckpt, path)
    return path
