"""FedDistill (feddistill.txt, Algorithm 1) and its query-based variant.

FedDistill: every node keeps a personal model Gamma_i (its own architecture, never sent). Each
round it trains Gamma_i on its data, then trains its copy theta_i of the global model on
CE + KD from Gamma_i (temperature-softened), and sends theta_i for FedAvg.

feddistill-query: the nodes train their copies on CE as in FedAvg, and instead of averaging the
server distills the ensemble of the returned models into the global model on a held-out
validation set (training samples no node holds).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Sequence

import torch
from torch import nn

from ..data.batches import batches
from ..data.datasets import ImageTensors
from ..evaluate import accuracy, ensemble_probs, predict_logits
from ..student.distill import kd_loss
from .fedavg import FedAvg
from .local import (LocalContext, LocalResult, RoundInfo, State, cpu_state, cross_entropy_objective,
                    load_global, local_sgd, seeded_model)


class FedDistill(FedAvg):
    name = "feddistill"

    @property
    def personal_name(self) -> str:
        return self.cfg.personal_model or self.cfg.model

    def personal_model(self, node: int, state: State | None, device: torch.device) -> nn.Module:
        model = seeded_model(self.personal_name, self.info, self.cfg.seed, 7, node)
        if state is not None:
            model.load_state_dict(state)
        return model.to(device)

    def local_update(self, ctx: LocalContext) -> LocalResult:
        personal = self.personal_model(ctx.node, ctx.node_state.get("personal"), ctx.device)
        # The personal model trains on its own data only (FedGen's term is for the global copy).
        personal_metrics = local_sgd(personal, replace(ctx, extra_loss=None), cross_entropy_objective)
        personal.eval().requires_grad_(False)
        model = load_global(self.build, ctx)
        T, w = self.cfg.distill_temperature, self.cfg.distill_weight

        def objective(model, x, y):
            out = cross_entropy_objective(model, x, y)
            with torch.no_grad():
                teacher = personal(x)
            kd = kd_loss(out["logits"], teacher, T)
            return {**out, "loss": out["loss"] + w * kd, "kd": kd.detach()}

        metrics = local_sgd(model, ctx, objective)
        metrics["personal_loss"] = personal_metrics["loss"]
        return LocalResult(cpu_state(model), len(ctx.data), node_state={"personal": cpu_state(personal)},
                           metrics=metrics)

    def evaluate_nodes(self, node_states, test, device, label_counts):
        """Mean accuracy of the personal models on the test samples of their own node's classes (the
        paper's Local Node Acc: a node holding 2 classes is asked about those 2), and on the whole test set."""
        own, whole = [], []
        for k, s in sorted(node_states.items()):
            if "personal" not in s:
                continue
            logits = predict_logits(self.personal_model(k, s["personal"], device), test, device)
            mask = (label_counts[k] > 0)[test.labels]
            if mask.any():  # a node whose classes the test set lacks answers for nothing of its own
                own.append(accuracy(logits[mask], test.labels[mask]))
            whole.append(accuracy(logits, test.labels))
        out = {"personal_accuracy": sum(own) / len(own)} if own else {}
        if whole:
            out["personal_accuracy_all_classes"] = sum(whole) / len(whole)
        return out


class FedDistillQuery(FedAvg):
    name = "feddistill-query"

    def __init__(self, cfg, info, validation: ImageTensors | None = None):
        super().__init__(cfg, info)
        self.validation = validation

    def aggregate(self, global_state: State, results: Sequence[LocalResult], server_state: dict[str, Any],
                  rnd: RoundInfo) -> tuple[State, dict[str, Any]]:
        if self.validation is None:
            raise ValueError("feddistill-query needs the server's validation set")
        device, gen = rnd.device, rnd.gen
        nodes = []
        for r in results:
            m = self.build()
            m.load_state_dict(r.state)
            nodes.append(m.to(device).eval().requires_grad_(False))
        model = self.build()
        model.load_state_dict(global_state)
        model.to(device).train()
        opt = torch.optim.SGD(model.parameters(), lr=self.cfg.lr, momentum=0.9, weight_decay=self.cfg.weight_decay)
        T = self.cfg.distill_temperature
        for _ in range(self.cfg.server_epochs):
            for x, _ in batches(self.validation, self.cfg.batch_size, device=device, generator=gen, shuffle=True):
                with torch.no_grad():
                    target = ensemble_probs([n(x) for n in nodes]).clamp_min(1e-8).log()
                loss = kd_loss(model(x), target, T)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        return cpu_state(model), server_state
