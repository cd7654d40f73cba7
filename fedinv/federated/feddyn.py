"""FedDyn (Acar et al. 2021): a dynamic regularizer that makes local optima consistent with the global one.

Node k minimizes  L_k(w) - <g_k, w> + (alpha / 2) ||w - w_global||^2, then updates its linear term
g_k <- g_k - alpha (w_k - w_global). The server keeps h and sets the model to the average minus
h / alpha (`aggregate.feddyn_aggregate`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ..aggregate import feddyn_aggregate
from ..config import POSITIVE, check_fields, option
from ..train.objectives import classification_objective
from .fedavg import FedAvg
from .fedprox import proximal_term
from .local import LocalContext, LocalResult, State, cpu_state, load_global, local_sgd
from .registry import register_algorithm


def linear_term(params: dict[str, torch.Tensor], g: dict[str, torch.Tensor]) -> torch.Tensor:
    """sum over parameters of <g, p>."""
    return sum((p * g[k]).sum() for k, p in params.items())


@dataclass(frozen=True)
class DynParams:
    alpha: float = option(1e-2, "the dynamic regularizer's alpha (FedFTG's default)", valid=POSITIVE)

    def __post_init__(self) -> None:
        check_fields(self)


@register_algorithm
class FedDyn(FedAvg):
    name = "feddyn"
    Params = DynParams
    legacy = {"feddyn_alpha": "alpha"}

    def init_server(self, global_state: State, names: Sequence[str]) -> dict[str, Any]:
        return {"h": {k: torch.zeros_like(global_state[k]) for k in names}}

    def local_update(self, ctx: LocalContext) -> LocalResult:
        alpha = self.params.alpha
        model = load_global(self.build, ctx)
        names = [n for n, _ in model.named_parameters()]
        g = ctx.node_state.get("g") or {k: torch.zeros_like(ctx.global_state[k]) for k in names}
        g_dev = {k: v.to(ctx.device) for k, v in g.items()}
        anchor = {k: ctx.global_state[k].to(ctx.device) for k in names}

        def objective(model, x, y):
            out = classification_objective(model, x, y)
            params = dict(model.named_parameters())
            reg = alpha / 2 * proximal_term(params, anchor) - linear_term(params, g_dev)
            return {**out, "loss": out["loss"] + reg}

        metrics = local_sgd(model, ctx, objective)
        state = cpu_state(model)
        new_g = {k: g[k] - alpha * (state[k] - ctx.global_state[k]) for k in names}
        return LocalResult(state, len(ctx.data), node_state={"g": new_g}, metrics=metrics)

    def aggregate(self, global_state, results, server_state, rnd):
        new_global, h = feddyn_aggregate(global_state, [r.state for r in results], [r.num_samples for r in results],
                                         server_state["h"], self.params.alpha, rnd.num_nodes, self.mean)
        return new_global, {**server_state, "h": h}
