"""Objectives shared by several loops, as pure functions returning `{"loss": ..., <parts>}`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton's KD: T^2 * KL(softmax(t / T) || softmax(s / T)), mean over the batch.

    teacher_logits may be log-probabilities (e.g. the log of an ensemble's probabilities): only
    differences between entries of a row matter to the softmax.
    """
    # in fp32 also under bf16 autocast: at T = 4 the softened targets differ in the third decimal,
    # below bf16's resolution (8 bits of mantissa)
    t = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    s = F.log_softmax(student_logits.float() / temperature, dim=1)
    return F.kl_div(s, t, reduction="batchmean", log_target=True) * temperature ** 2


def hard_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """KD against the teacher's hard label: cross-entropy on argmax(teacher_logits), mean over the batch."""
    return F.cross_entropy(student_logits.float(), teacher_logits.argmax(1))


def confidence_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
                       ) -> torch.Tensor:
    """Per image, the teacher's confidence p (its top probability) decides the target's form:
    p x CE on its hard label + (1 - p) x Hinton's KD at `temperature`, mean over the batch. Where
    the ensemble is sure the student learns its decision; where it is not, its doubt."""
    t = teacher_logits.float()
    p, label = F.softmax(t, dim=1).max(1)
    ce = F.cross_entropy(student_logits.float(), label, reduction="none")
    kd = F.kl_div(F.log_softmax(student_logits.float() / temperature, dim=1), F.log_softmax(t / temperature, dim=1),
                  reduction="none", log_target=True).sum(1) * temperature ** 2
    return (p * ce + (1 - p) * kd).mean()


def classification_objective(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """Cross-entropy on a batch x [B, C, H, W], y [B]; returns {"loss", "correct", "logits"}."""
    logits = model(x)
    return {"loss": F.cross_entropy(logits, y), "correct": (logits.argmax(1) == y).sum(), "logits": logits}
