"""The server-step protocol: what runs on the server after aggregation (FedFTG, FedDF, FedGen).

A server step is built from the run's configs (its own settings, `Params`, in the TOML table named
after it: [ftg], [feddf], [fedgen]) and the model constructor, keeps its state (a
generator and its optimizer) in the round checkpoint, may send something to the nodes and give
their local update an extra loss term, and may leave generated samples to save. The round loop
calls exactly these methods and never asks which step it holds.
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar, Sequence

import torch
from torch import nn

from ..data.datasets import DatasetInfo
from ..models import place
from ..runtime import RoundStream, rng
from ..train import round_decay
from .config import FederateConfig, GeneratorConfig, NoParams
from .local import LocalResult, RoundInfo, State

NodeLoss = Callable[[nn.Module, int], torch.Tensor]


class ServerStep:
    """Base class: a step that changes nothing and sends nothing. Subclasses register with
    `registry.register_server_step` under `name`."""

    name: ClassVar[str] = ""
    Params: ClassVar[type] = NoParams
    legacy: ClassVar[dict[str, str]] = {}  # [generator] keys of older configs -> fields of Params

    def __init__(self, cfg: FederateConfig, gcfg: GeneratorConfig, params: Any, info: DatasetInfo,
                 build: Callable[[], nn.Module]):
        self.cfg, self.gcfg, self.params, self.info, self.build = cfg, gcfg, params, info, build
        self.last_samples: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def init_state(self) -> dict[str, Any]:
        """The step's state before round 1 (tensors and nested dicts: it travels in checkpoints)."""
        return {}

    def broadcast(self, state: dict[str, Any]) -> dict[str, Any]:
        """What the nodes receive from the step beside the global model ({} = nothing)."""
        return {}

    def node_loss(self, broadcast: dict[str, Any], device: torch.device, gen: torch.Generator) -> NodeLoss | None:
        """An extra term of the nodes' local loss, given (model, batch size); None = none."""
        return None

    def step(self, global_state: State, results: Sequence[LocalResult], state: dict[str, Any],
             rnd: RoundInfo) -> tuple[State, dict[str, Any], dict[str, float]]:
        """One round's step after aggregation; returns (global state, step state, metrics)."""
        return global_state, state, {}

    def samples(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """Store rows (uint8 images, labels, ensemble log-probabilities) of the latest step's
        generator, when `save_every` asked for them; None otherwise."""
        return self.last_samples

    @property
    def save_every(self) -> int:
        """Rounds between saved batches of generated images (0: never)."""
        return getattr(self.params, "save_every", 0)


class GeneratorStep(ServerStep):
    """A server step that trains a generator with Adam from round to round (FedFTG, FedDF, FedGen)."""

    def new_generator(self) -> nn.Module:
        raise NotImplementedError

    def seeded_generator(self) -> nn.Module:
        """`new_generator()` with weights from random stream (seed, GENERATOR_INIT)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(rng(self.cfg.seed, RoundStream.GENERATOR_INIT).initial_seed())
            return self.new_generator()

    def init_state(self) -> dict[str, Any]:
        g = self.seeded_generator()
        return {"generator": g.state_dict(),
                "optimizer": torch.optim.Adam(g.parameters(), lr=self.gcfg.generator_lr).state_dict()}

    def load_generator(self, state: dict[str, Any], device: torch.device) -> nn.Module:
        g = self.seeded_generator()
        g.load_state_dict(state["generator"])
        return place(g, device)

    def generator_optimizer(self, g: nn.Module, state: dict[str, Any], rnd: int) -> torch.optim.Optimizer:
        """The generator's Adam with its saved state, at this round's learning rate."""
        opt = torch.optim.Adam(g.parameters(), lr=self.gcfg.generator_lr)
        opt.load_state_dict(state["optimizer"])
        for group in opt.param_groups:
            group["lr"] = round_decay(self.gcfg.generator_lr, self.gcfg.lr_decay, rnd)
        return opt

    def local_models(self, results: Sequence[LocalResult], device: torch.device) -> list[nn.Module]:
        """The round's local models, frozen, in eval mode."""
        models = []
        for r in results:
            m = self.build()
            m.load_state_dict(r.state)
            models.append(place(m, device).eval().requires_grad_(False))
        return models
