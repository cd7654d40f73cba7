"""The one inversion objective every synthesis method optimizes.

Per step (Algorithm 1 of one-shot-dataset-distillation.txt): pick n of the N teachers, jitter and
flip the images, average the sampled teachers' (CE + BN-statistic [+ competition]) terms, add the
image priors. deepinversion (deepinversion.py) descends it on the pixels; the generator methods
(generator.py: fast, dense) on a generator's weights. Both call `InversionObjective`, so they optimize the
same function of the images.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ...runtime import Stream, rng
from .config import SynthesisConfig
from .ensemble import TeacherEnsemble, TermWeights
from .hooks import BNMomentum
from .labels import sample_teachers
from .losses import l2_prior, tv_l1, tv_l2


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


def batch_teachers(cfg: SynthesisConfig, num_teachers: int, batch_index: int) -> torch.Tensor | None:
    """The teachers every step of batch `batch_index` uses, where they are fixed for the batch: cycling
    (teachers_per_step = 1: teacher b mod N), all of them (0, or N or more), or fixed_teachers (the n
    drawn once per batch from their own stream (seed, batch), so the step's other draws, jitter and
    flip, are those of the default); None where every step draws its own."""
    n = cfg.teachers_per_step
    if n == 1:
        return torch.tensor([batch_index % num_teachers])
    if n <= 0 or n >= num_teachers:
        return torch.arange(num_teachers)
    if cfg.fixed_teachers:
        return sample_teachers(num_teachers, n, rng(cfg.seed, Stream.SYNTHESIS_FIXED_TEACHERS, batch_index))
    return None


def teachers_for_step(cfg: SynthesisConfig, num_teachers: int, batch_index: int, gen: torch.Generator) -> torch.Tensor:
    """n sampled teachers per step (Algorithm 1), or the batch's own where they are fixed for it
    (`batch_teachers`)."""
    fixed = batch_teachers(cfg, num_teachers, batch_index)
    return fixed if fixed is not None else sample_teachers(num_teachers, cfg.teachers_per_step, gen)


@dataclass
class StepLoss:
    """One evaluation of the objective: the scalar to descend, its parts (detached floats are read
    with `.parts()`), and the teachers that took part."""

    loss: torch.Tensor
    ce: torch.Tensor
    bn: torch.Tensor
    comp: torch.Tensor
    teachers: list[int]

    def parts(self) -> dict[str, float]:
        return {"loss": self.loss.item(), "ce": self.ce.item(), "bn": self.bn.item(), "comp": self.comp.item()}


class InversionObjective:
    """loss(x) = mean over sampled teachers of (ce + a_bn bn + a_comp comp) + priors, on jittered x.

    `student`: the competition term's opponent (adaptive mode); `bn_momentum`: the teachers' BN
    targets are compared with a running blend of batch statistics (BNMomentum), or with each
    batch's own when None; `hard`: the CE's hard-sample exponent (coboost). All randomness (teacher
    sampling, jitter, flip) comes from `gen`.
    """

    def __init__(self, teachers: TeacherEnsemble, cfg: SynthesisConfig, student: nn.Module | None = None,
                 bn_momentum: BNMomentum | None = None, hard: float = 0.0):
        self.teachers, self.cfg, self.bn_momentum = teachers, cfg, bn_momentum
        self.student = student if cfg.a_comp else None
        self.seen, self.weight = teachers.masks(cfg.head_mask, cfg.weighted_ce)
        self.tw = TermWeights(cfg.first_bn_multiplier, cfg.comp_temperature, hard)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, batch_index: int, gen: torch.Generator,
                 autocast=None) -> StepLoss:
        """The objective on images x [B, C, H, W] (normalized) for targets y [B]; `autocast`: a
        context manager factory for the forward passes (Stepper.autocast)."""
        cfg, teachers = self.cfg, self.teachers
        idx = teachers_for_step(cfg, len(teachers), batch_index, gen)
        xj = jitter_flip(x, cfg.jitter, cfg.flip, gen)
        with autocast() if autocast is not None else _nothing():
            student_logits = self.student(xj) if self.student is not None else None
            ce, bn, comp = teachers.terms(xj, y, idx.to(teachers.device), self.seen, self.weight, student_logits,
                                          self.tw, self.bn_momentum).float().mean(0)
        loss = ce + cfg.a_bn * bn + cfg.a_comp * comp + image_priors(xj, cfg)
        return StepLoss(loss, ce, bn, comp, idx.tolist())


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc) -> None:
        return None
