"""`fedinv synthesize` as a library call: teachers folder in, HDF5 store out, batch by batch."""

from __future__ import annotations

import itertools
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..checkpoint import ModelCheckpoint
from ..config import SynthesisConfig, to_dict
from ..data.batches import denormalize
from ..data.datasets import DatasetInfo
from ..errors import ConfigError
from ..nodes import load_teachers
from ..runtime import generator, resolve_device, resolve_precision, sha256_file
from ..store import StoreWriter
from .engine import Inverted, StepCallback, invert_batch
from .labels import sample_labels
from .teachers import TeacherSet

log = logging.getLogger(__name__)


@dataclass
class Teachers:
    """Loaded teachers: the set used by the engine, their checkpoints, files and dataset facts."""

    set: TeacherSet
    checkpoints: list[ModelCheckpoint]
    paths: list[Path]
    info: DatasetInfo


def teacher_paths(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"teachers folder {folder} not found; train teachers with `fedinv train-teachers`")
    paths = sorted(folder.glob("node-*.pt"), key=lambda p: int(p.stem.split("-")[1]))
    if not paths:
        raise ConfigError(f"no node-*.pt teacher checkpoints in {folder}")
    return paths


def load_teacher_set(folder: str | Path, device: torch.device, batched: str = "auto") -> Teachers:
    """Load and validate every `node-K.pt` in `folder` (same classes, input shape and dataset)."""
    paths = teacher_paths(folder)
    ckpts = load_teachers(paths)
    infos = [c.extra.get("dataset") for c in ckpts]
    if any(i is None for i in infos):
        bad = paths[[i is None for i in infos].index(True)]
        raise ConfigError(f"{bad} records no dataset facts (normalization); it was not written by train-teachers")
    if any((i["mean"], i["std"]) != (infos[0]["mean"], infos[0]["std"]) for i in infos):
        raise ConfigError(f"teachers in {folder} were trained with different input normalizations")
    info = DatasetInfo(**{k: tuple(v) if isinstance(v, list) else v for k, v in infos[0].items()})
    if ckpts[0].image_shape != info.image_shape:
        raise ConfigError(f"{paths[0]}: model input {ckpts[0].image_shape} does not match its dataset "
                          f"{info.name} {info.image_shape}")
    models = [c.build(device) for c in ckpts]
    counts = torch.tensor([c.label_counts for c in ckpts])
    use_batched = {"auto": None, "batched": True, "loop": False}[batched]
    return Teachers(TeacherSet(models, counts, device, info.image_shape, use_batched), ckpts, paths, info)


def pixel_bounds(info: DatasetInfo, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalized values of pixels 0 and 1 per channel, each [1, C, 1, 1]."""
    mean = torch.tensor(info.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(info.std, device=device).view(1, -1, 1, 1)
    return (0 - mean) / std, (1 - mean) / std


def to_uint8(x: torch.Tensor, info: DatasetInfo) -> torch.Tensor:
    return (denormalize(x.float(), info) * 255).round().to(torch.uint8)


def store_meta(teachers: Teachers, cfg: SynthesisConfig) -> dict[str, Any]:
    info = teachers.info
    return {"num_classes": info.num_classes, "image_shape": list(info.image_shape), "mean": list(info.mean),
            "std": list(info.std), "seed": cfg.seed,
            "config": {k: v for k, v in to_dict(cfg).items() if k not in ("device", "batched")},
            "teachers": {p.name: sha256_file(p) for p in teachers.paths},
            "dataset": {"name": info.name, "class_names": list(info.class_names), "hflip": info.hflip}}


@torch.no_grad()
def check_student(student: nn.Module, teachers: Teachers, device: torch.device) -> None:
    """A student must take the teachers' images and predict their classes."""
    was_training = student.training
    student.eval()
    probe = student(torch.zeros(1, *teachers.info.image_shape, device=device))
    student.train(was_training)
    if probe.shape[1] != teachers.set.num_classes:
        raise ConfigError(f"the student predicts {probe.shape[1]} classes, the teachers {teachers.set.num_classes}")


def make_batch(teachers: Teachers, cfg: SynthesisConfig, b: int, size: int, *,
               bounds: tuple[torch.Tensor, torch.Tensor], amp_dtype: torch.dtype | None,
               student: nn.Module | None = None, on_step: StepCallback | None = None,
               ) -> tuple[tuple[torch.Tensor, ...], Inverted]:
    """Synthesize batch `b` (labels, images, soft labels, provenance), drawn from (seed, b) alone.

    Returns the store row tuple (images uint8, labels, soft labels, source) and the engine result.
    """
    gen = generator(cfg.seed, 3, b)
    y = sample_labels(cfg.label_sampler, teachers.set.counts, size, gen)
    inv = invert_batch(teachers.set, y, cfg, batch_index=b, bounds=bounds, gen=gen, amp_dtype=amp_dtype,
                       student=student, on_step=on_step)
    soft = teachers.set.ensemble_probs(inv.x).clamp_min(1e-8).log()
    mask = inv.teacher_mask if len(teachers.set) <= 31 else -1
    source = torch.tensor([[b, mask]] * size, dtype=torch.int32)
    return (to_uint8(inv.x, teachers.info), y, soft, source), inv


def synthesize(teachers_dir: str | Path, out: str | Path, cfg: SynthesisConfig, *, resume: bool = False,
               student: nn.Module | None = None, progress: bool = True,
               shard: tuple[int, int] = (0, 1)) -> dict[str, Any]:
    """Synthesize `cfg.num_images` images from the teachers in `teachers_dir` into the store `out`.

    Batch b is drawn from generator (seed, b): a resumed run continues at the first batch not in
    the store and writes exactly what an uninterrupted run would. `shard=(r, W)` writes only the
    batches b with b mod W == r (one rank of a distributed run; see `fedinv.distributed`).
    """
    rank, world = shard
    if not 0 <= rank < world:
        raise ConfigError(f"shard {rank} of {world} does not exist")
    device = resolve_device(cfg.device)
    amp_dtype = resolve_precision(cfg.precision, device)
    teachers = load_teacher_set(teachers_dir, device, cfg.batched)
    if not teachers.info.hflip and cfg.flip:
        log.info("%s: flips change labels here, so --flip is ignored", teachers.info.name)
        cfg = type(cfg)(**{**to_dict(cfg), "flip": False})
    if student is not None:
        student = student.to(device).eval().requires_grad_(False)
        check_student(student, teachers, device)
    bounds = pixel_bounds(teachers.info, device)
    num_batches = math.ceil(cfg.num_images / cfg.batch_size)
    stats: dict[str, Any] = {"batches": 0, "images": 0, "seconds": 0.0}
    mine = list(range(rank, num_batches, world))
    sizes = [min(cfg.batch_size, cfg.num_images - b * cfg.batch_size) for b in mine]
    with StoreWriter(out, store_meta(teachers, cfg), resume=resume, chunk_rows=cfg.batch_size) as store:
        n = store.n_valid
        ends = list(itertools.accumulate(sizes))
        if n and n not in ends:
            raise ConfigError(f"{out} holds {n} images, not a whole number of this run's batches")
        start = ends.index(n) + 1 if n else 0
        if start:
            log.info("resuming %s after %d of %d batches", out, start, len(mine))
        bar = tqdm(total=len(mine), initial=start, desc="synthesize", unit="batch", disable=not progress)
        for b, size in zip(mine[start:], sizes[start:]):
            t0 = time.perf_counter()

            def show(step: int, losses: dict[str, float]) -> None:
                bar.set_postfix(step=step, **{k: f"{v:.3g}" for k, v in losses.items()})

            batch, inv = make_batch(teachers, cfg, b, size, bounds=bounds, amp_dtype=amp_dtype, student=student,
                                    on_step=show if progress else None)
            store.append(*batch)
            dt = time.perf_counter() - t0
            stats["batches"] += 1
            stats["images"] += size
            stats["seconds"] += dt
            bar.update(1)
            bar.set_postfix(img_per_s=f"{stats['images'] / stats['seconds']:.2f}",
                            **{k: f"{v:.3g}" for k, v in inv.losses.items()})
            log.debug("batch %d: %s", b, inv.losses)
        bar.close()
        stats["n_valid"] = store.n_valid
    stats["last_losses"] = inv.losses if stats["batches"] else None
    return stats
