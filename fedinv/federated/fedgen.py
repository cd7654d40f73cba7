"""FedGen (Zhu et al. 2021), a baseline: a generator in feature space, shared with the nodes.

The server learns G(z, y) -> features (the input of the classifier head) such that the class-level
ensemble of the round's local heads labels them y (plus the diversity term). The nodes receive G
and add CE(head(G(z, y)), y) with y drawn from the label distribution to their local loss, which
carries the other nodes' knowledge of the decision boundaries into every local update.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ..config import FederateConfig, GeneratorConfig
from ..data.datasets import DatasetInfo
from ..evaluate import class_shares
from ..inversion.generator import FeatureGenerator
from ..runtime import generator as rng
from .ftg import class_level_logits, diversity_loss, label_distribution
from .local import RoundInfo, State, cpu_state, head_of


def feature_dim(model: nn.Module) -> int:
    return head_of(model).in_features


class FedGenServer:
    def __init__(self, cfg: FederateConfig, gcfg: GeneratorConfig, info: DatasetInfo, dim: int):
        self.cfg, self.gcfg, self.info, self.dim = cfg, gcfg, info, dim

    def new_generator(self) -> FeatureGenerator:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(rng(self.cfg.seed, 8).initial_seed())
            return FeatureGenerator(self.gcfg.nz, self.info.num_classes, self.dim)

    def init_state(self) -> dict[str, Any]:
        g = self.new_generator()
        return {"generator": g.state_dict(),
                "optimizer": torch.optim.Adam(g.parameters(), lr=self.gcfg.generator_lr).state_dict(),
                "label_p": torch.full((self.info.num_classes,), 1.0 / self.info.num_classes)}

    def node_loss(self, state: dict[str, Any], device: torch.device, gen: torch.Generator
                  ) -> Callable[[nn.Module, int], torch.Tensor]:
        """The nodes' extra term: CE of the local head on generated features (G frozen)."""
        g = self.new_generator()
        g.load_state_dict(state["generator"])
        g.to(device).eval()
        p, w, nz = state["label_p"], self.gcfg.fedgen_weight, self.gcfg.nz

        def loss(model: nn.Module, batch: int) -> torch.Tensor:
            y = torch.multinomial(p, batch, replacement=True, generator=gen).to(device)
            z = torch.randn(batch, nz, generator=gen).to(device)
            with torch.no_grad():
                feats = g(z, y)
            return w * F.cross_entropy(head_of(model)(feats), y)
        return loss

    def step(self, build, global_state: State, local_states: Sequence[State], label_counts: torch.Tensor,
             state: dict[str, Any], rnd: RoundInfo) -> tuple[State, dict[str, Any], dict[str, float]]:
        """Train G against the round's local heads; the global model is left as aggregated."""
        device, gcfg = rnd.device, self.gcfg
        heads = []
        for s in local_states:
            m = build()
            m.load_state_dict(s)
            heads.append(head_of(m).to(device).eval().requires_grad_(False))
        shares = class_shares(label_counts).float().to(device)
        p = label_distribution(label_counts)
        g = self.new_generator()
        g.load_state_dict(state["generator"])
        g.to(device).train()
        opt = torch.optim.Adam(g.parameters(), lr=gcfg.generator_lr)
        opt.load_state_dict(state["optimizer"])
        for group in opt.param_groups:
            group["lr"] = gcfg.generator_lr * gcfg.lr_decay ** rnd.round
        total = 0.0
        for _ in range(gcfg.iterations * gcfg.generator_steps):
            y = torch.multinomial(p, gcfg.batch_size, replacement=True, generator=rnd.gen).to(device)
            z = torch.randn(gcfg.batch_size, gcfg.nz, generator=rnd.gen).to(device)
            feats = g(z, y)
            ens = class_level_logits(torch.stack([h(feats) for h in heads]), shares)
            loss = F.cross_entropy(ens, y) + gcfg.lambda_div * diversity_loss(z, feats) / len(heads)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item()
        new_state = {"generator": cpu_state(g), "optimizer": opt.state_dict(), "label_p": p}
        return global_state, new_state, {"server_generator_loss": total / (gcfg.iterations * gcfg.generator_steps)}
