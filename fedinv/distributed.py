"""Several processes on one job, launched by `torchrun`: synthesis split by batches over ranks.

Under `torchrun --nproc-per-node K fedinv synthesize ...` (or `python -m fedinv`), rank r
synthesizes the batches b with b mod K == r into its own shard `OUT.rank-r-of-K.h5`; when all
ranks are done, rank 0 interleaves the shards into OUT in batch order and removes them. Every
batch is drawn from (seed, b) alone, so OUT holds what a single process would have written (bit
for bit when both use the same number of CPU threads per process: torchrun sets 1). CPU ranks
talk over gloo, CUDA ranks over NCCL, one GPU per rank (LOCAL_RANK).
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.distributed as dist

from .config import SynthesisConfig
from .errors import ConfigError
from .store import merge_shards


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


def synthesize_distributed(teachers_dir: str | Path, out: str | Path, cfg: SynthesisConfig, *,
                           resume: bool = False, progress: bool = True, world: World | None = None,
                           **kwargs: Any) -> dict[str, Any]:
    """`synthesize` split over the ranks of `world` (default: from torchrun's environment)."""
    from .inversion.synthesize import synthesize

    world = world or world_from_env()
    if not world.is_distributed:
        return synthesize(teachers_dir, out, cfg, resume=resume, progress=progress, **kwargs)
    out = Path(out)
    if out.exists() and not resume:
        raise ConfigError(f"{out} exists; pass --resume to continue it, or choose another --out")
    cfg = replace(cfg, device=rank_device(cfg.device, world))
    with process_group(world, cfg.device):
        stats: dict[str, Any] = {}
        if not out.exists():  # a finished merge from an earlier run is complete
            stats = synthesize(teachers_dir, shard_path(out, world), cfg, resume=resume,
                               progress=progress and world.rank == 0, shard=(world.rank, world.size), **kwargs)
        dist.barrier()
        if world.rank == 0 and not out.exists():
            shards = [shard_path(out, world, r) for r in range(world.size)]
            merge_shards(shards, out, cfg.batch_size)
            for s in shards:
                s.unlink()
        dist.barrier()
    return {**stats, "rank": world.rank, "world_size": world.size, "out": str(out)}
