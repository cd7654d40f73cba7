"""MOON (Li et al. 2021), a baseline: a model-contrastive term pulls the local representation
towards the global model's and away from the node's previous local model's.

    l_con = -log( e^{sim(z, z_glob)/tau} / (e^{sim(z, z_glob)/tau} + e^{sim(z, z_prev)/tau}) )

z is the input of the classifier head; loss = CE + mu * l_con (the paper tunes mu in {0.1, 1, 5}).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..config import TEMPERATURE, WEIGHT, check_fields, option
from .fedavg import FedAvg
from .local import LocalContext, LocalResult, cpu_state, features_and_logits, load_global, local_sgd
from .registry import register_algorithm


def contrastive_loss(z: torch.Tensor, z_global: torch.Tensor, z_prev: torch.Tensor, tau: float) -> torch.Tensor:
    """MOON's model-contrastive loss, mean over the batch; z* are [B, D]."""
    pos = nn.functional.cosine_similarity(z, z_global, dim=-1) / tau
    neg = nn.functional.cosine_similarity(z, z_prev, dim=-1) / tau
    return -(pos - torch.logsumexp(torch.stack([pos, neg]), dim=0)).mean()


@dataclass(frozen=True)
class MoonParams:
    mu: float = option(1.0, "weight of the model-contrastive term (the paper tunes it in 0.1, 1, 5)", valid=WEIGHT)
    temperature: float = option(0.5, "temperature of the contrastive term", valid=TEMPERATURE)

    def __post_init__(self) -> None:
        check_fields(self)


@register_algorithm
class Moon(FedAvg):
    name = "moon"
    Params = MoonParams
    legacy = {"mu": "mu", "moon_temperature": "temperature"}

    def local_update(self, ctx: LocalContext) -> LocalResult:
        model = load_global(self.build, ctx)
        frozen_global = load_global(self.build, ctx).eval().requires_grad_(False)
        frozen_prev = self.build()
        frozen_prev.load_state_dict(ctx.node_state.get("previous") or ctx.global_state)
        frozen_prev = frozen_prev.to(ctx.device).eval().requires_grad_(False)
        mu, tau = self.params.mu, self.params.temperature

        def objective(model, x, y):
            z, logits = features_and_logits(model, x)
            with torch.no_grad():
                z_glob, _ = features_and_logits(frozen_global, x)
                z_prev, _ = features_and_logits(frozen_prev, x)
            ce = nn.functional.cross_entropy(logits, y)
            con = contrastive_loss(z, z_glob, z_prev, tau)
            return {"loss": ce + mu * con, "correct": (logits.argmax(1) == y).sum(), "contrastive": con.detach()}

        metrics = local_sgd(model, ctx, objective)
        state = cpu_state(model)
        return LocalResult(state, len(ctx.data), node_state={"previous": state}, metrics=metrics)
