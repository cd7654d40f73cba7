"""FedGen (Zhu et al. 2021), a baseline: a generator in feature space, shared with the nodes.

The server learns G(z, y) -> features (the input of the classifier head) such that the class-level
ensemble of the round's local heads labels them y (plus the diversity term). The nodes receive G
and add CE(head(G(z, y)), y) with y drawn from the label distribution to their local loss, which
carries the other nodes' knowledge of the decision boundaries into every local update.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ..config import WEIGHT, check_fields, option
from ..evaluate import class_level_logits, class_shares
from ..models.generators import FeatureGenerator
from ..train import Stepper
from .ftg import diversity_loss, label_distribution
from .local import LocalResult, RoundInfo, State, cpu_state, head_of
from .registry import register_server_step
from .server_step import GeneratorStep, NodeLoss


def feature_dim(model: nn.Module) -> int:
    return head_of(model).in_features


@dataclass(frozen=True)
class FedGenParams:
    """[fedgen]: how much the nodes learn from the generated features."""

    weight: float = option(1.0, "weight of the nodes' CE on generated features", valid=WEIGHT)

    def __post_init__(self) -> None:
        check_fields(self)


@register_server_step
class FedGen(GeneratorStep):
    name = "fedgen"
    Params = FedGenParams
    legacy = {"fedgen_weight": "weight"}

    def __init__(self, *args: Any):
        super().__init__(*args)
        self.dim = feature_dim(self.build())

    def new_generator(self) -> FeatureGenerator:
        return FeatureGenerator(self.gcfg.nz, self.info.num_classes, self.dim)

    def init_state(self) -> dict[str, Any]:
        return {**super().init_state(), "label_p": torch.full((self.info.num_classes,), 1.0 / self.info.num_classes)}

    def broadcast(self, state: dict[str, Any]) -> dict[str, Any]:
        return {"generator": state["generator"], "label_p": state["label_p"]}

    def node_loss(self, broadcast: dict[str, Any], device: torch.device, gen: torch.Generator) -> NodeLoss:
        """The nodes' extra term: CE of the local head on generated features (G frozen)."""
        g = self.load_generator(broadcast, device).eval()
        p, w, nz = broadcast["label_p"], self.params.weight, self.gcfg.nz

        def loss(model: nn.Module, batch: int) -> torch.Tensor:
            y = torch.multinomial(p, batch, replacement=True, generator=gen).to(device)
            z = torch.randn(batch, nz, generator=gen).to(device)
            with torch.no_grad():
                feats = g(z, y)
            return w * F.cross_entropy(head_of(model)(feats), y)
        return loss

    def step(self, global_state: State, results: Sequence[LocalResult], state: dict[str, Any],
             rnd: RoundInfo) -> tuple[State, dict[str, Any], dict[str, float]]:
        """Train G against the round's local heads; the global model is left as aggregated."""
        device, gcfg = rnd.device, self.gcfg
        heads = [head_of(m) for m in self.local_models(results, device)]
        counts = torch.stack([r.label_counts for r in results])
        shares, p = class_shares(counts).float().to(device), label_distribution(counts)
        g = self.load_generator(state, device).train()
        g_step = Stepper(self.generator_optimizer(g, state, rnd.round), device, rnd.amp_dtype)
        total = 0.0
        for _ in range(gcfg.iterations * gcfg.generator_steps):
            y = torch.multinomial(p, gcfg.batch_size, replacement=True, generator=rnd.gen).to(device)
            z = torch.randn(gcfg.batch_size, gcfg.nz, generator=rnd.gen).to(device)
            with g_step.autocast():
                feats = g(z, y)
                ens = class_level_logits(torch.stack([h(feats) for h in heads]), shares)
                loss = F.cross_entropy(ens, y) + gcfg.lambda_div * diversity_loss(z, feats) / len(heads)
            g_step.step(loss)
            total += loss.item()
        new_state = {"generator": cpu_state(g), "optimizer": g_step.optimizer.state_dict(), "label_p": p}
        return global_state, new_state, {"server_generator_loss": total / (gcfg.iterations * gcfg.generator_steps)}
