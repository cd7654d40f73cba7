"""FedAvg (McMahan et al. 2017): local SGD on cross-entropy, the server averages weighted by data size.

The base of the other algorithms: each overrides the objective, the gradient correction, the
state it keeps, the aggregation, or what its nodes report, and registers itself by name with
the dataclass of its own constants (`Params`, TOML table [<name>]).
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable, ClassVar, Collection, Sequence

import torch

from ..aggregate import apply_server_lr, combine
from ..data.datasets import DatasetInfo, ImageTensors
from ..models import build_model_for
from ..train.objectives import classification_objective
from .config import FederateConfig, NoParams
from .local import LocalContext, LocalResult, RoundInfo, State, cpu_state, load_global, local_sgd
from .registry import register_algorithm


@register_algorithm
class FedAvg:
    name: ClassVar[str] = "fedavg"
    Params: ClassVar[type] = NoParams
    legacy: ClassVar[dict[str, str]] = {}  # [federate] keys of older configs -> fields of Params
    replaces_aggregation: ClassVar[bool] = False  # the server distills instead of averaging (no server step)
    reports_nodes: ClassVar[bool] = False  # nodes keep models of their own worth evaluating (`evaluate_node`)

    def __init__(self, cfg: FederateConfig, params: Any, info: DatasetInfo, validation: ImageTensors | None = None,
                 trust: Collection[str] = ()):
        """`trust`: the `module:factory` models (`models.build_model`) `cfg.model` may be."""
        self.cfg, self.params, self.info, self.trust = cfg, params, info, tuple(trust)
        self.build = partial(build_model_for, cfg.model, info, self.trust)

    @classmethod
    def holdout(cls, params: Any) -> int:
        """Training samples the server keeps as its validation set (none here)."""
        return 0

    def init_server(self, global_state: State, names: Sequence[str]) -> dict[str, Any]:
        """The server's own state (kept in the round checkpoint); `names` are the model's parameters."""
        return {}

    def broadcast(self, server_state: dict[str, Any]) -> dict[str, Any]:
        """What the nodes receive beside the global model."""
        return {}

    def objective(self, ctx: LocalContext) -> Callable:
        return classification_objective

    def local_update(self, ctx: LocalContext) -> LocalResult:
        model = load_global(self.build, ctx)
        metrics = local_sgd(model, ctx, self.objective(ctx))
        return LocalResult(cpu_state(model), len(ctx.data), metrics=metrics)

    def mean(self, states: Sequence[State], weights: Sequence[float]) -> State:
        """The participants' models combined by the configured rule (`aggregate.combine`); `weights`
        are their reported sizes, which the plain mean uses (and multi-Krum, capped, with `size_cap`)."""
        fc = self.cfg
        return combine(states, weights, fc.aggregation, fc.trim, fc.byzantine, fc.krum_threshold, fc.size_cap)

    def aggregate(self, global_state: State, results: Sequence[LocalResult], server_state: dict[str, Any],
                  rnd: RoundInfo) -> tuple[State, dict[str, Any]]:
        avg = self.mean([r.state for r in results], [r.num_samples for r in results])
        return apply_server_lr(global_state, avg, self.cfg.server_lr), server_state

    def evaluate_node(self, node: int, node_state: dict[str, Any], test: ImageTensors, device: torch.device,
                      label_counts: torch.Tensor) -> dict[str, float]:
        """Metrics of what node `node` keeps for itself (FedDistill's personal model); none here.
        `label_counts` [K] are the node's training label counts. The run reports each metric's mean
        over the nodes that report it."""
        return {}
