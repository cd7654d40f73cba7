"""The student's minibatches: an epoch's shuffled, augmented batches of the store (a rank's share
under torchrun), and endless batches of a node's own real data."""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Iterator

import torch

from ...data.batches import batches, normalize, random_crop_flip
from ...data.datasets import DatasetInfo, ImageTensors
from ...distributed import World
from ...runtime import Stream, rng
from ...store import iterate_store
from .config import StudentConfig
from .objective import mix_pairs


def epoch_steps(n: int, cfg: StudentConfig) -> int:
    """An epoch's steps over a pool of n rows: steps_per_epoch, or one pass."""
    return cfg.steps_per_epoch or math.ceil(n / cfg.batch_size)


def epoch_batches(store: Path, n: int, epoch: int, cfg: StudentConfig, info: DatasetInfo, world: World,
                  device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """This rank's (x normalized [B, C, H, W], y [B], stored soft labels [B, K]) of `epoch` over the
    first n rows of `store`: every rank reads the same shuffled order and takes every K-th batch.
    `epoch_steps` batches in all: one pass, or steps_per_epoch drawn from as many fresh shuffles of
    the pool as they take."""
    gen = rng(cfg.seed, Stream.STUDENT_EPOCH, epoch)
    order_gen = gen
    if world.is_distributed:  # ranks share the batch order; augmentation is one stream per rank
        order_gen, gen = rng(cfg.seed, Stream.STUDENT_EPOCH, epoch), rng(cfg.seed, Stream.STUDENT_RANK_AUGMENT,
                                                                        epoch, world.rank)
    steps = epoch_steps(n, cfg)
    usable = steps - steps % world.size  # every rank takes the same number of steps
    pad = max(1, info.image_size // 14)
    passes = (iterate_store(store, cfg.batch_size, order_gen, cfg.buffer_batches, limit=n) for _ in range(usable))
    for i, (xb, yb, soft) in enumerate(itertools.islice(itertools.chain.from_iterable(passes), usable)):
        if i % world.size != world.rank:
            continue
        x = xb.to(device, non_blocking=True)
        if cfg.augment:
            x = random_crop_flip(x, pad, info.hflip, gen)
        x, y = normalize(x, info), yb.to(device)
        if cfg.mixup:
            x = mix_pairs(x, gen)
        yield x, y, soft


def local_batches(data: ImageTensors, batch_size: int, device: torch.device, seed: int) -> Iterator[tuple]:
    """Endless augmented batches of a node's real data, reshuffled every pass."""
    for rnd in range(1 << 30):
        yield from batches(data, batch_size, device=device, generator=rng(seed, Stream.STUDENT_LOCAL_DATA, rnd),
                           shuffle=True, augment=True)
