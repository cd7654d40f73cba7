"""Knowledge-distillation losses as pure functions."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton's KD: T^2 * KL(softmax(t / T) || softmax(s / T)), mean over the batch.

    teacher_logits may be log-probabilities (e.g. the log of an ensemble's probabilities): only
    differences between entries of a row matter to the softmax.
    """
    t = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    s = F.log_softmax(student_logits.float() / temperature, dim=1)
    return F.kl_div(s, t, reduction="batchmean", log_target=True) * temperature ** 2
