"""What the one-shot studies share: a variant's config as fedinv's configs, the data, the teachers.

A study's config holds fedinv's own tables ([data], [partition], [teachers], [synthesis],
[student]) and a [study] table of the study's own knobs; `run_config` reads the first kind as
`fedinv run` reads a TOML, with the seed and device of the run put in.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from fedinv.config import DataConfig, PartitionConfig
from fedinv.data.batches import normalize
from fedinv.data.datasets import ImageTensors, load_dataset
from fedinv.oneshot.pipeline import SECTIONS, RunConfig, partition_stage
from fedinv.oneshot.teachers import train_teachers
from fedinv.train.resume import comparable


def timed(seconds: dict[str, float], stage: str, done: bool, fn: Callable[[], Any]) -> None:
    """Run fn unless `done`; adds its wall time to seconds[stage] (the seconds of every resumed piece)."""
    if not done:
        t0 = time.perf_counter()
        fn()
        seconds[stage] = seconds.get(stage, 0.0) + time.perf_counter() - t0


def read_seconds(path: Path) -> dict[str, float]:
    """The stage seconds a run folder saved so far ({} before any)."""
    return json.loads(path.read_text()) if path.is_file() else {}


def study_fields(cfg: dict[str, Any]) -> dict[str, Any]:
    return dict(cfg.get("study", {}))


def run_config(cfg: dict[str, Any], seed: int, device: str) -> RunConfig:
    """fedinv's tables of `cfg` (unknown fields are errors), every stage at `seed` on `device`."""
    rc = RunConfig.from_tables({k: v for k, v in cfg.items() if k in SECTIONS}, "the study's config")
    return dataclasses.replace(
        rc, partition=dataclasses.replace(rc.partition, seed=seed),
        teachers=dataclasses.replace(rc.teachers, seed=seed, device=device),
        synthesis=dataclasses.replace(rc.synthesis, seed=seed, device=device),
        student=dataclasses.replace(rc.student, seed=seed, device=device))


@functools.lru_cache(maxsize=2)
def splits(data: DataConfig) -> tuple[ImageTensors, ImageTensors]:
    """The train and test split (read once per process)."""
    return load_dataset(data, "train"), load_dataset(data, "test")


def shared(out: Path, name: str, *configs: Any) -> Path:
    """A folder that every variant of a study shares for what `configs` alone decide (the teachers, the
    audit's reference): OUT/STUDY/shared/NAME-KEY, KEY a hash of the configs less their run-time fields.
    `out` is the run's own folder, OUT/STUDY/VARIANT/seed-S."""
    key = hashlib.sha256(json.dumps([comparable(c) for c in configs], sort_keys=True, default=str).encode())
    return out.parent.parent / "shared" / f"{name}-{key.hexdigest()[:12]}"


def teachers(rc: RunConfig, out: Path) -> tuple[Path, dict[str, Any], float]:
    """The partition and teachers of `rc`, made once for every variant that has them (continued when
    interrupted): the teachers' folder, their report and the seconds spent on them now (0: read back)."""
    folder = shared(out, "teachers", rc.data, rc.partition, rc.teachers)
    teachers_dir = folder / "teachers"
    seconds = 0.0
    if not (teachers_dir / "report.json").is_file():
        train, test = splits(rc.data)
        t0 = time.perf_counter()
        part = partition_stage(rc, folder / "partition.json", train)
        train_teachers(part, rc.teachers, teachers_dir, progress=False, train=train, test=test)
        seconds = time.perf_counter() - t0
    return teachers_dir, json.loads((teachers_dir / "report.json").read_text()), seconds


def reference(rc: RunConfig, out: Path, epochs: int) -> Path:
    """The audit's reference, shared by the study's variants: the teachers' model trained for `epochs`
    on all training images (one IID node)."""
    ref = dataclasses.replace(rc, partition=PartitionConfig(scheme="iid", num_nodes=1),
                              teachers=dataclasses.replace(rc.teachers, epochs=epochs))
    folder, _, _ = teachers(ref, out)
    return folder / "node-0.pt"


@torch.no_grad()
def real_bn_statistics(model: nn.Module, images: ImageTensors, batch: int = 500) -> nn.Module:
    """A diagnostic: `model` with every BN layer's running statistics recomputed, in place, as plain
    averages over `images` (labels unread; real data a server never has)."""
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # a cumulative average, not an exponential one
    x = normalize(images.images, images.info)
    for i in range(0, len(x), batch):
        model(x[i:i + batch])
    return model
