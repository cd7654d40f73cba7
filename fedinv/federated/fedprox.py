"""FedProx (Li et al. 2020): FedAvg with the proximal term (mu / 2) ||w - w_global||^2 locally."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..config import WEIGHT, check_fields, option
from ..train.objectives import classification_objective
from .fedavg import FedAvg
from .local import LocalContext
from .registry import register_algorithm


def proximal_term(params: dict[str, torch.Tensor], anchor: dict[str, torch.Tensor]) -> torch.Tensor:
    """sum over parameters of ||p - anchor||^2 (a pure function of tensors)."""
    return sum(((p - anchor[k]) ** 2).sum() for k, p in params.items())


@dataclass(frozen=True)
class ProxParams:
    mu: float = option(1e-4, "weight of the proximal term (mu/2)||w - w_global||^2 (FedFTG's default)", valid=WEIGHT)

    def __post_init__(self) -> None:
        check_fields(self)


@register_algorithm
class FedProx(FedAvg):
    name = "fedprox"
    Params = ProxParams
    legacy = {"mu": "mu"}

    def objective(self, ctx: LocalContext) -> Callable:
        anchor = {k: v.to(ctx.device) for k, v in ctx.global_state.items()}
        mu = self.params.mu

        def objective(model, x, y):
            out = classification_objective(model, x, y)
            prox = proximal_term(dict(model.named_parameters()), anchor)
            return {**out, "loss": out["loss"] + mu / 2 * prox, "prox": prox.detach()}
        return objective
