"""Every learning-rate schedule in fedinv: per optimizer step within a run, and per round."""

from __future__ import annotations

import math

SCHEDULES = ("cosine", "step", "constant")


def lr_at(step: int, total: int, base: float, schedule: str) -> float:
    """Learning rate at optimizer step `step` of `total`.

    cosine: from `base` to 0; step: x0.1 at 50% and again at 75% of training; constant: `base`.
    """
    if schedule == "cosine":
        return base * 0.5 * (1 + math.cos(math.pi * step / total))
    if schedule == "step":
        return base * (0.1 ** ((step >= total // 2) + (step >= 3 * total // 4)))
    if schedule == "constant":
        return base
    raise ValueError(f"unknown schedule {schedule!r}; known: {', '.join(SCHEDULES)}")


def lr_at_epoch(progress: float, epochs: int, base: float, schedule: str) -> float:
    """`lr_at` on a fractional epoch count `progress` in [0, epochs) (resolution 1e-4 epoch), for
    loops whose number of steps per epoch changes while they run (a growing synthetic store)."""
    return lr_at(round(progress * 10_000), epochs * 10_000, base, schedule)


def round_decay(base: float, decay: float, rnd: int) -> float:
    """The multi-round schedule: `base` x `decay`^round (round 0-based)."""
    return base * decay ** rnd
