"""SCAFFOLD (Karimireddy et al. 2020): control variates correct the local drift.

Each local step uses the gradient g + c - c_i. After K steps with learning rate lr, the node sets
c_i+ = c_i - c + (w_global - w_i) / (K lr) (option II) and uploads delta c_i = c_i+ - c_i; the server
moves c by (1/N) sum delta c_i (`aggregate.scaffold_aggregate`).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ..aggregate import scaffold_aggregate
from ..train.objectives import classification_objective
from .fedavg import FedAvg
from .local import LocalContext, LocalResult, State, cpu_state, load_global, local_sgd
from .registry import register_algorithm


def scaffold_control_update(c_i: State, c: State, global_state: State, local_state: State,
                            steps: int, lr: float) -> State:
    """Option II of Algorithm 1: c_i+ = c_i - c + (x - y_i) / (K lr)."""
    return {k: c_i[k] - c[k] + (global_state[k] - local_state[k]) / (steps * lr) for k in c_i}


@register_algorithm
class Scaffold(FedAvg):
    name = "scaffold"

    def init_server(self, global_state: State, names: Sequence[str]) -> dict[str, Any]:
        return {"c": {k: torch.zeros_like(global_state[k]) for k in names}}

    def broadcast(self, server_state):
        return {"c": server_state["c"]}

    def local_update(self, ctx: LocalContext) -> LocalResult:
        model = load_global(self.build, ctx)
        c = ctx.broadcast["c"]
        c_i = ctx.node_state.get("c") or {k: torch.zeros_like(v) for k, v in c.items()}
        params = dict(model.named_parameters())
        correction = {k: (c[k] - c_i[k]).to(ctx.device) for k in c}

        def correct_grads() -> None:
            for k, p in params.items():
                if p.grad is not None:
                    p.grad.add_(correction[k])

        metrics = local_sgd(model, ctx, classification_objective, correct_grads)
        state = cpu_state(model)
        new_c_i = scaffold_control_update(c_i, c, ctx.global_state, state, int(metrics["steps"]), ctx.lr)
        delta = {k: new_c_i[k] - c_i[k] for k in c_i}
        return LocalResult(state, len(ctx.data), node_state={"c": new_c_i}, upload={"delta_c": delta},
                           metrics=metrics)

    def aggregate(self, global_state, results, server_state, rnd):
        new_global, c = scaffold_aggregate(global_state, [r.state for r in results], [r.num_samples for r in results],
                                           server_state["c"], [r.upload["delta_c"] for r in results], rnd.num_nodes,
                                           self.cfg.server_lr, self.mean)
        return new_global, {**server_state, "c": c}
