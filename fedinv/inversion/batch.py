"""One synthetic batch as the store keeps it: labels drawn, images inverted, soft labels from the
class-level ensemble, provenance; drawn from random stream (seed, batch) alone."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..data.batches import denormalize
from ..data.datasets import DatasetInfo
from ..errors import ConfigError, DivergedError
from ..runtime import Stream, rng
from .engine import Inverted, StepCallback
from .ensemble import TeacherEnsemble
from .labels import sample_labels

if TYPE_CHECKING:
    from .methods import Synthesizer

Rows = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # images u8, labels, soft, source


def pixel_bounds(info: DatasetInfo, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalized values of pixels 0 and 1 per channel, each [1, C, 1, 1]."""
    mean = torch.tensor(info.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(info.std, device=device).view(1, -1, 1, 1)
    return (0 - mean) / std, (1 - mean) / std


def to_uint8(x: torch.Tensor, info: DatasetInfo) -> torch.Tensor:
    return (denormalize(x.float(), info) * 255).round().to(torch.uint8)


@torch.no_grad()
def check_student(student: nn.Module, teachers: TeacherEnsemble, device: torch.device) -> None:
    """A student must take the teachers' images and predict their classes."""
    was_training = student.training
    student.eval()
    probe = student(torch.zeros(1, *teachers.image_shape, device=device))
    student.train(was_training)
    if probe.shape[1] != teachers.num_classes:
        raise ConfigError(f"the student predicts {probe.shape[1]} classes, the teachers {teachers.num_classes}")


def make_batch(synth: "Synthesizer", b: int, size: int, *, student: nn.Module | None = None,
               on_step: StepCallback | None = None) -> tuple[Rows, Inverted]:
    """Synthesize batch `b` of `size` images with `synth` (any method of methods.py).

    Returns the store rows (images uint8, labels, soft labels, source) and the method's result.
    Labels and every per-batch draw come from random stream (seed, b).
    """
    teachers, cfg = synth.teachers, synth.cfg
    gen = rng(cfg.seed, Stream.SYNTHESIS_BATCH, b)
    y = sample_labels(cfg.label_sampler, teachers.counts, size, gen)
    inv = synth.invert(y, b, gen, student=student, on_step=on_step)
    soft = teachers.ensemble_log_probs(inv.x)
    if not all(math.isfinite(v) for v in inv.losses.values()) or not torch.isfinite(soft).all():
        raise DivergedError(f"synthetic batch {b}: the loss is not finite ({inv.losses}); nothing of it was "
                            f"written. Lower the learning rate, or check the teachers")
    mask = inv.teacher_mask if len(teachers) <= 31 else -1
    source = torch.tensor([[b, mask]] * size, dtype=torch.int32)
    return (to_uint8(inv.x, teachers.info), y, soft, source), inv
