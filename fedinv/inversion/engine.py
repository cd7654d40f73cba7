"""The per-batch engine (`--method deepinversion`): optimize one batch of pixels against the teachers.

Per step: the inversion objective (objective.py: sampled teachers, jitter, CE + BN-statistic
[+ competition] terms, image priors), an Adam step on the pixels, pixels clipped to the valid
range. Labels and I/O live in labels.py and batch.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ..config import SynthesisConfig
from ..train import Stepper, lr_at
from .ensemble import TeacherEnsemble
from .objective import InversionObjective

StepCallback = Callable[[int, dict[str, float]], None]


@dataclass
class Inverted:
    """A synthesized batch: images x [B, C, H, W] (normalized, detached), targets y [B], the final
    loss components, and the bitmask of teachers that took part."""

    x: torch.Tensor
    y: torch.Tensor
    losses: dict[str, float]
    teacher_mask: int


def invert_batch(teachers: TeacherEnsemble, y: torch.Tensor, cfg: SynthesisConfig, *, batch_index: int,
                 bounds: tuple[torch.Tensor, torch.Tensor], gen: torch.Generator, amp_dtype: torch.dtype | None,
                 student: nn.Module | None = None, on_step: StepCallback | None = None,
                 log_every: int = 50) -> Inverted:
    """Optimize a batch of images for targets y [B] (pixels within `bounds`, each [1, C, 1, 1]).

    All randomness comes from `gen` (a CPU generator), so the same generator state regenerates
    the same batch. A fresh Adam per batch: no optimizer state carries over between batches.
    """
    device = teachers.device
    shape = (len(y), *teachers.image_shape)
    x = torch.randn(shape, generator=gen).to(device).requires_grad_(True)
    y = y.to(device)
    stepper = Stepper(torch.optim.Adam([x], lr=cfg.lr), device, amp_dtype)
    objective = InversionObjective(teachers, cfg, student)
    lo, hi = bounds
    used = 0
    for step in range(cfg.iterations):
        stepper.set_lr(lr_at(step, cfg.iterations, cfg.lr, "cosine"))
        out = objective(x, y, batch_index, gen, stepper.autocast)
        used |= sum(1 << i for i in out.teachers)
        stepper.step(out.loss)
        with torch.no_grad():
            x.copy_(torch.maximum(torch.minimum(x, hi), lo))
        if on_step is not None and (step % log_every == 0 or step == cfg.iterations - 1):
            on_step(step, out.parts())
    return Inverted(x.detach(), y, out.parts(), used)
