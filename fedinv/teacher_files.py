"""A teachers folder as the server receives it: `node-K.pt` checkpoints (with label counts and
dataset facts), validated together. The one place that finds, loads and checks teachers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .checkpoint import ModelCheckpoint, load_checkpoint
from .data.datasets import DatasetInfo
from .errors import ConfigError
from .runtime import sha256_file


@dataclass(frozen=True)
class TeacherFolder:
    """Validated teacher checkpoints (in node order), their files, and the dataset they share."""

    checkpoints: list[ModelCheckpoint]
    paths: list[Path]
    info: DatasetInfo

    def hashes(self) -> dict[str, str]:
        """file name -> sha256, recorded in every store made from these teachers."""
        return {p.name: sha256_file(p) for p in self.paths}


def teacher_paths(folder: str | Path) -> list[Path]:
    """The `node-K.pt` files of a folder, in node order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"teachers folder {folder} not found; train teachers with `fedinv train-teachers`")
    paths = sorted(folder.glob("node-*.pt"), key=lambda p: int(p.stem.split("-")[1]))
    if not paths:
        raise ConfigError(f"no node-*.pt teacher checkpoints in {folder}")
    return paths


def load_teacher_checkpoints(paths: Sequence[str | Path]) -> list[ModelCheckpoint]:
    """Load teacher checkpoints and check they agree on classes and input shape."""
    ckpts = [load_checkpoint(p) for p in paths]
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


def load_teacher_folder(folder: str | Path) -> TeacherFolder:
    """Load and validate every `node-K.pt` in `folder` (same classes, input shape and dataset)."""
    paths = teacher_paths(folder)
    ckpts = load_teacher_checkpoints(paths)
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
