"""FedAvg (McMahan et al. 2017): local SGD on cross-entropy, the server averages weighted by data size.

The base of the other algorithms: each overrides the objective, the gradient correction, the
state it keeps, or the aggregation.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable, Sequence

import torch

from ..config import FederateConfig
from ..data.datasets import DatasetInfo, ImageTensors
from ..models import build_model
from .aggregate import server_step, weighted_average
from .local import (LocalContext, LocalResult, RoundInfo, State, cpu_state, cross_entropy_objective,
                    load_global, local_sgd)


class FedAvg:
    name = "fedavg"

    def __init__(self, cfg: FederateConfig, info: DatasetInfo):
        self.cfg, self.info = cfg, info
        self.build = partial(build_model, cfg.model, info.channels, info.num_classes, info.image_size)

    def init_server(self, global_state: State, params: Sequence[str]) -> dict[str, Any]:
        """The server's own state (kept in the round checkpoint)."""
        return {}

    def broadcast(self, server_state: dict[str, Any]) -> dict[str, Any]:
        """What the nodes receive beside the global model."""
        return {}

    def objective(self, ctx: LocalContext) -> Callable:
        return cross_entropy_objective

    def local_update(self, ctx: LocalContext) -> LocalResult:
        model = load_global(self.build, ctx)
        metrics = local_sgd(model, ctx, self.objective(ctx))
        return LocalResult(cpu_state(model), len(ctx.data), metrics=metrics)

    def aggregate(self, global_state: State, results: Sequence[LocalResult], server_state: dict[str, Any],
                  rnd: RoundInfo) -> tuple[State, dict[str, Any]]:
        avg = weighted_average([r.state for r in results], [r.num_samples for r in results])
        return server_step(global_state, avg, self.cfg.server_lr), server_state

    def evaluate_nodes(self, node_states: dict[int, dict[str, Any]], test: ImageTensors, device: torch.device,
                       label_counts: torch.Tensor) -> dict[str, float]:
        """Metrics of what the nodes keep for themselves (FedDistill's personal models); none here.
        `label_counts` [N, K] are the nodes' training label counts."""
        return {}
