"""The student's loss on one batch: KD against the teachers' targets and CE on the stored labels
(and mixup, which makes the batch the teachers then label)."""

from __future__ import annotations

import torch
from torch import nn

from ...train.objectives import confidence_kd_loss, hard_kd_loss, kd_loss
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


def mix_pairs(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """x [B, C, H, W] -> lam * x + (1 - lam) * x[perm], lam ~ U(0, 1) per image, perm a shuffle."""
    lam = torch.rand(len(x), 1, 1, 1, generator=gen).to(x.device, x.dtype)
    perm = torch.randperm(len(x), generator=gen).to(x.device)
    return lam * x + (1 - lam) * x[perm]
