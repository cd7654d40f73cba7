"""The student's loss on one batch: KD against the teachers' targets and CE on the stored labels
(and mixup and ODS, which make the batch the teachers then label)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ...train.objectives import confidence_kd_loss, hard_kd_loss, kd_loss
from ..synthesis.ensemble import TeacherEnsemble
from .config import StudentConfig

KD_FORMS = {"soft": kd_loss, "hard": lambda s, t, _temperature: hard_kd_loss(s, t), "confidence": confidence_kd_loss}


def student_objective(student: nn.Module, x: torch.Tensor, y: torch.Tensor, targets: torch.Tensor | None,
                      cfg: StudentConfig) -> dict[str, torch.Tensor]:
    """KD (against `targets`, teacher logits or log-probabilities [B, K]; soft, hard or by confidence as
    `cfg.kd_form`) and CE on y, weighted."""
    logits = student(x)
    out = {"loss": torch.zeros((), device=x.device), "correct": (logits.argmax(1) == y).sum()}
    if cfg.kd_weight and targets is not None:
        out["kd"] = KD_FORMS[cfg.kd_form](logits, targets, cfg.temperature)
        out["loss"] = out["loss"] + cfg.kd_weight * out["kd"]
    if cfg.ce_weight:
        out["ce"] = nn.functional.cross_entropy(logits.float(), y)
        out["loss"] = out["loss"] + cfg.ce_weight * out["ce"]
    return out


def ods_perturb(teachers: TeacherEnsemble, x: torch.Tensor, eta: float, std: Sequence[float],
                gen: torch.Generator) -> torch.Tensor:
    """Output-diversified sampling (Co-Boosting's KD step, after Tashiro et al. 2020): move the
    normalized images x [B, C, H, W] by eta pixel units (eta / std per channel) along the sign of the
    gradient of w . p(x), p the teachers' ensemble probabilities [B, K] and w ~ U(-1, 1) a random
    direction per image from `gen`; the teachers then label the moved images."""
    w = (torch.rand(len(x), teachers.num_classes, generator=gen) * 2 - 1).to(x.device)
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        probs = teachers.ensemble_probs(x, grad=True)
        (grad,) = torch.autograd.grad((w * probs).sum(), x)
    step = eta / torch.tensor(std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return (x + step * grad.sign()).detach()


def mix_pairs(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """x [B, C, H, W] -> lam * x + (1 - lam) * x[perm], lam ~ U(0, 1) per image, perm a shuffle."""
    lam = torch.rand(len(x), 1, 1, 1, generator=gen).to(x.device, x.dtype)
    perm = torch.randperm(len(x), generator=gen).to(x.device)
    return lam * x + (1 - lam) * x[perm]
