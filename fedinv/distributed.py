"""Several processes on one job, launched by `torchrun`: who this process is, its device, and
the process group. CPU ranks talk over gloo, CUDA ranks over NCCL, one GPU per rank (LOCAL_RANK).
The stages split their own work (`inversion.synthesize.synthesize_distributed`, the student's
DistributedDataParallel); this module knows none of them."""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
import torch.distributed as dist

from .errors import ConfigError


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_distributed(self) -> bool:
        return self.size > 1


def world_from_env(env: dict[str, str] | None = None) -> World:
    """The rank, world size and local rank torchrun sets (a single process without it)."""
    env = dict(os.environ) if env is None else env
    try:
        return World(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))
    except ValueError as e:
        raise ConfigError(f"RANK / WORLD_SIZE / LOCAL_RANK must be integers: {e}") from e


def rank_device(device: str, world: World) -> str:
    """One CUDA device per rank (cuda:LOCAL_RANK) when the job runs on CUDA; else as given."""
    if world.is_distributed and device in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{world.local_rank}"
    return device


@contextlib.contextmanager
def process_group(world: World, device: str) -> Iterator[None]:
    """Join torchrun's process group (gloo on CPU, NCCL on CUDA) for the block; no-op alone."""
    if not world.is_distributed or dist.is_initialized():
        yield
        return
    backend = "nccl" if device.startswith("cuda") else "gloo"
    dist.init_process_group(backend, timeout=datetime.timedelta(hours=6))
    try:
        yield
    finally:
        dist.destroy_process_group()


def shard_path(out: Path, world: World, rank: int | None = None) -> Path:
    r = world.rank if rank is None else rank
    return out.with_name(f"{out.stem}.rank-{r}-of-{world.size}{out.suffix}")
