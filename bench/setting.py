"""What the one-shot studies share: a variant's config as fedinv's configs, the data, the teachers.

A study's config holds fedinv's own tables ([data], [partition], [teachers], [synthesis],
[student]) and a [study] table of the study's own knobs; `run_config` reads the first kind as
`fedinv run` reads a TOML, with the seed and device of the run put in.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from pathlib import Path
from typing import Any

from fedinv.config import DataConfig, PartitionConfig
from fedinv.data.datasets import ImageTensors, load_dataset
from fedinv.oneshot.pipeline import SECTIONS, RunConfig, partition_stage
from fedinv.oneshot.teachers import train_teachers


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


def teachers(rc: RunConfig, folder: Path) -> tuple[Path, dict[str, Any], float]:
    """The partition and teachers of `rc` in folder/partition.json and folder/teachers (made once,
    continued when interrupted): the teachers' folder, their report and the seconds spent now."""
    train, test = splits(rc.data)
    t0 = time.perf_counter()
    part = partition_stage(rc, folder / "partition.json", train)
    out = folder / "teachers"
    if not (out / "report.json").is_file():
        train_teachers(part, rc.teachers, out, progress=False, train=train, test=test)
    return out, json.loads((out / "report.json").read_text()), time.perf_counter() - t0


def reference(rc: RunConfig, folder: Path, epochs: int) -> Path:
    """The audit's reference: the teachers' model trained on all training images (one IID node)."""
    if not (folder / "teachers" / "report.json").is_file():
        ref = dataclasses.replace(rc, partition=PartitionConfig(scheme="iid", num_nodes=1),
                                  teachers=dataclasses.replace(rc.teachers, epochs=epochs))
        train, test = splits(rc.data)
        part = partition_stage(ref, folder / "partition.json", train)
        train_teachers(part, ref.teachers, folder / "teachers", progress=False, train=train, test=test)
    return folder / "teachers" / "node-0.pt"
