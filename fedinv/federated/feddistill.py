"""FedDistill (feddistill.txt, Algorithm 1) and its query-based variant.

FedDistill: every node keeps a personal model Gamma_i (its own architecture, never sent). Each
round it trains Gamma_i on its data, then trains its copy theta_i of the global model on
CE + KD from Gamma_i (temperature-softened), and sends theta_i for FedAvg.

feddistill-query: the nodes train their copies on CE as in FedAvg, and instead of averaging the
server distills the ensemble of the returned models into the global model on a held-out
validation set (training samples no node holds).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Collection, Sequence

import torch
from torch import nn

from ..config import COUNT, TEMPERATURE, WEIGHT, check_fields, option
from ..data.batches import batches
from ..data.datasets import ImageTensors
from ..evaluate import accuracy, ensemble_probs, predict_logits
from ..models import place, seeded_model
from ..runtime import RoundStream
from ..train import Stepper, train_epoch
from ..train.objectives import classification_objective, kd_loss
from .fedavg import FedAvg
from .local import LocalContext, LocalResult, RoundInfo, State, cpu_state, load_global, local_sgd
from .registry import register_algorithm


@dataclass(frozen=True)
class DistillParams:
    temperature: float = option(3.0, "KD temperature of personal model -> global copy", valid=TEMPERATURE)
    weight: float = option(1.0, "weight of the KD term beside CE", valid=WEIGHT)
    personal_model: str = option("", "the personal model's architecture (empty = the run's model)")

    def __post_init__(self) -> None:
        check_fields(self)


@register_algorithm
class FedDistill(FedAvg):
    name = "feddistill"
    Params = DistillParams
    legacy = {"distill_temperature": "temperature", "distill_weight": "weight", "personal_model": "personal_model"}
    reports_nodes = True

    @property
    def personal_name(self) -> str:
        return self.params.personal_model or self.cfg.model

    def personal_model(self, node: int, state: State | None, device: torch.device) -> nn.Module:
        model = seeded_model(self.personal_name, self.info, self.cfg.seed, RoundStream.PERSONAL_INIT, node,
                             trust=self.trust)
        if state is not None:
            model.load_state_dict(state)
        return place(model, device)

    def local_update(self, ctx: LocalContext) -> LocalResult:
        personal = self.personal_model(ctx.node, ctx.node_state.get("personal"), ctx.device)
        # The personal model trains on its own data only (a server step's term is for the global copy).
        personal_metrics = local_sgd(personal, replace(ctx, extra_loss=None), classification_objective)
        personal.eval().requires_grad_(False)
        model = load_global(self.build, ctx)
        T, w = self.params.temperature, self.params.weight

        def objective(model, x, y):
            out = classification_objective(model, x, y)
            with torch.no_grad():
                teacher = personal(x)
            kd = kd_loss(out["logits"], teacher, T)
            return {**out, "loss": out["loss"] + w * kd, "kd": kd.detach()}

        metrics = local_sgd(model, ctx, objective)
        metrics["personal_loss"] = personal_metrics["loss"]
        return LocalResult(cpu_state(model), len(ctx.data), node_state={"personal": cpu_state(personal)},
                           metrics=metrics)

    def evaluate_node(self, node, node_state, test, device, label_counts):
        """The personal model's accuracy on the test samples of the node's own classes (the paper's
        Local Node Acc: a node holding 2 classes is asked about those 2), and on the whole test set."""
        if "personal" not in node_state:
            return {}
        logits = predict_logits(self.personal_model(node, node_state["personal"], device), test, device)
        out = {"personal_accuracy_all_classes": accuracy(logits, test.labels)}
        mask = (label_counts > 0)[test.labels]
        if mask.any():  # a node whose classes the test set lacks answers for nothing of its own
            out["personal_accuracy"] = accuracy(logits[mask], test.labels[mask])
        return out


@dataclass(frozen=True)
class QueryParams:
    temperature: float = option(3.0, "KD temperature of the server's distillation", valid=TEMPERATURE)
    validation_size: int = option(5000, "training samples held out for the server (not given to any node)",
                                  valid=COUNT)
    server_epochs: int = option(2, "server distillation epochs over the validation set", valid=COUNT)

    def __post_init__(self) -> None:
        check_fields(self)


@register_algorithm
class FedDistillQuery(FedAvg):
    name = "feddistill-query"
    Params = QueryParams
    legacy = {"distill_temperature": "temperature", "validation_size": "validation_size",
              "server_epochs": "server_epochs"}
    replaces_aggregation = True

    def __init__(self, cfg, params, info, validation: ImageTensors | None = None, trust: Collection[str] = ()):
        super().__init__(cfg, params, info, trust=trust)
        self.validation = validation

    @classmethod
    def holdout(cls, params: QueryParams) -> int:
        return params.validation_size

    def aggregate(self, global_state: State, results: Sequence[LocalResult], server_state: dict[str, Any],
                  rnd: RoundInfo) -> tuple[State, dict[str, Any]]:
        if self.validation is None:
            raise ValueError("feddistill-query needs the server's validation set")
        nodes = []
        for r in results:
            m = self.build()
            m.load_state_dict(r.state)
            nodes.append(m.to(rnd.device).eval().requires_grad_(False))
        model = self.build()
        model.load_state_dict(global_state)
        model.to(rnd.device)
        stepper = Stepper(torch.optim.SGD(model.parameters(), lr=self.cfg.lr, momentum=0.9,
                                          weight_decay=self.cfg.weight_decay), rnd.device, rnd.amp_dtype)
        T = self.params.temperature

        def objective(model, x, _):
            with torch.no_grad():
                target = ensemble_probs([n(x) for n in nodes]).clamp_min(1e-8).log()
            return {"loss": kd_loss(model(x), target, T)}

        for _ in range(self.params.server_epochs):
            train_epoch(model, batches(self.validation, self.cfg.batch_size, device=rnd.device, generator=rnd.gen,
                                       shuffle=True), objective, stepper)
        return cpu_state(model), server_state
