"""The sampling-DeepInversion loop: optimize one batch of images against the teachers.

Per step (Algorithm 1 of one-shot-dataset-distillation.txt): pick n of the N teachers, jitter
and flip the images, average the sampled teachers' (CE + BN-statistic [+ competition]) terms,
add the image priors, take an Adam step, clip pixels to the valid range. Labels, losses and
I/O live in labels.py, losses.py / teachers.py and synthesize.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ..config import SynthesisConfig
from ..train import Stepper, lr_at
from .ensemble import TeacherEnsemble, TermWeights
from .labels import sample_teachers
from .losses import l2_prior, tv_l1, tv_l2

StepCallback = Callable[[int, dict[str, float]], None]


@dataclass
class Inverted:
    """A synthesized batch: images x [B, C, H, W] (normalized, detached), targets y [B], the final
    loss components, and the bitmask of teachers that took part."""

    x: torch.Tensor
    y: torch.Tensor
    losses: dict[str, float]
    teacher_mask: int


def jitter_flip(x: torch.Tensor, shift: int, flip: bool, gen: torch.Generator) -> torch.Tensor:
    """Roll the whole batch by up to `shift` px in each direction, and flip it with probability 1/2."""
    if shift > 0:
        dy, dx = torch.randint(-shift, shift + 1, (2,), generator=gen).tolist()
        x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
    if flip and torch.rand((), generator=gen).item() < 0.5:
        x = x.flip(3)
    return x


def image_priors(x: torch.Tensor, cfg: SynthesisConfig) -> torch.Tensor:
    """The teacher-independent priors: a_tv_l1 TV_l1 + a_tv_l2 TV_l2 + a_l2 ||x||, in fp32."""
    total = torch.zeros((), device=x.device)
    for weight, fn in ((cfg.a_tv_l1, tv_l1), (cfg.a_tv_l2, tv_l2), (cfg.a_l2, l2_prior)):
        if weight:
            total = total + weight * fn(x)
    return total


def teachers_for_step(cfg: SynthesisConfig, num_teachers: int, batch_index: int, gen: torch.Generator) -> torch.Tensor:
    """n sampled teachers per step; with teachers_per_step = 1, cycling: batch b uses teacher b mod N."""
    if cfg.teachers_per_step == 1:
        return torch.tensor([batch_index % num_teachers])
    return sample_teachers(num_teachers, cfg.teachers_per_step, gen)


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
    seen, weight = teachers.masks(cfg.head_mask, cfg.weighted_ce)
    tw = TermWeights(cfg.first_bn_multiplier, cfg.comp_temperature)
    lo, hi = bounds
    used = 0
    for step in range(cfg.iterations):
        stepper.set_lr(lr_at(step, cfg.iterations, cfg.lr, "cosine"))
        idx = teachers_for_step(cfg, len(teachers), batch_index, gen)
        used |= sum(1 << i for i in idx.tolist())
        xj = jitter_flip(x, cfg.jitter, cfg.flip, gen)
        with stepper.autocast():
            student_logits = student(xj) if student is not None and cfg.a_comp else None
            ce, bn, comp = teachers.terms(xj, y, idx.to(device), seen, weight, student_logits, tw).float().mean(0)
        loss = ce + cfg.a_bn * bn + cfg.a_comp * comp + image_priors(xj, cfg)
        stepper.step(loss)
        with torch.no_grad():
            x.copy_(torch.maximum(torch.minimum(x, hi), lo))
        if on_step is not None and (step % log_every == 0 or step == cfg.iterations - 1):
            on_step(step, {"loss": loss.item(), "ce": ce.item(), "bn": bn.item(), "comp": comp.item()})
    losses = {"loss": loss.item(), "ce": ce.item(), "bn": bn.item(), "comp": comp.item()}
    return Inverted(x.detach(), y, losses, used)
