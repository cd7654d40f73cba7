"""The generator methods (`--method fast`, `--method dense`): a generator G(z) (G(z, y) with
`conditional`) produces each batch and is refined for a few steps against the inversion objective,
so the cost of inversion is shared by all batches instead of paid anew for each.

fast (Fast-Datafree, "Up to 100x faster data-free knowledge distillation"): the generator's
meta-learned start is copied for every batch, the copy and the batch's latent codes take `steps`
Adam steps, and the start then moves towards the refined copy (a Reptile step: its gradient is
start - refined, taken by an Adam with betas 0.5, 0.999).
dense (DENSE): one generator, never reset, takes `steps` Adam steps per batch.

Both descend `InversionObjective` (the same function the per-batch engine descends) on the
generator's images, optionally with BN momentum across batches. All per-batch randomness comes
from the batch's own stream; the state carried between batches (generator, meta optimizer, BN
averages) is `state_dict()`, checkpointed beside the store by synthesize.py.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from ..config import SynthesisConfig
from ..models.generators import ImageGenerator, to_model_input
from ..runtime import Stream, rng
from ..train import Stepper
from .engine import Inverted, StepCallback
from .ensemble import TeacherEnsemble
from .hooks import BNMomentum
from .objective import InversionObjective

DEFAULTS = {"fast": {"steps": 5, "lr_g": 3e-3}, "dense": {"steps": 30, "lr_g": 1e-3}}
BETAS = (0.5, 0.999)  # Adam betas of both references, inner and meta


def generator_settings(cfg: SynthesisConfig) -> tuple[int, float, float]:
    """(steps, lr_g, meta_lr) of a generator method, the method's defaults filled in for zeros."""
    d = DEFAULTS[cfg.method]
    steps, lr_g = cfg.steps or d["steps"], cfg.lr_g or d["lr_g"]
    return steps, lr_g, cfg.meta_lr or steps * lr_g


class GeneratorSynthesizer:
    """The generator of a fast or dense synthesis run and what it carries between batches."""

    def __init__(self, teachers: TeacherEnsemble, cfg: SynthesisConfig, amp_dtype: torch.dtype | None):
        if cfg.method not in DEFAULTS:
            raise ValueError(f"{cfg.method} is no generator method")
        self.teachers, self.cfg, self.amp_dtype = teachers, cfg, amp_dtype
        self.steps, self.lr_g, meta_lr = generator_settings(cfg)
        info = teachers.info
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(rng(cfg.seed, Stream.SYNTHESIS_GENERATOR).initial_seed())
            self.generator = ImageGenerator(cfg.nz, info.num_classes, info.channels, info.image_size,
                                            width=cfg.generator_width, conditional=cfg.conditional)
        self.generator.to(teachers.device).train()
        self.meta_optimizer = (torch.optim.Adam(self.generator.parameters(), lr=meta_lr, betas=BETAS)
                               if cfg.method == "fast" else None)
        self.momentum = BNMomentum(cfg.bn_momentum, len(teachers)) if cfg.bn_momentum else None

    def invert(self, y: torch.Tensor, batch_index: int, gen: torch.Generator, student: nn.Module | None = None,
               on_step: StepCallback | None = None, log_every: int = 5) -> Inverted:
        """Refine the generator on targets y [B] and return its images (normalized, detached).

        Draws from `gen`: the latent codes, then per step the objective's teachers and jitter.
        """
        cfg, device = self.cfg, self.teachers.device
        y = y.to(device)
        z = torch.randn(len(y), cfg.nz, generator=gen).to(device).requires_grad_(cfg.lr_z > 0)
        g = copy.deepcopy(self.generator) if self.meta_optimizer is not None else self.generator
        groups: list[dict[str, Any]] = [{"params": list(g.parameters())}]
        if cfg.lr_z > 0:
            groups.append({"params": [z], "lr": cfg.lr_z})
        stepper = Stepper(torch.optim.Adam(groups, lr=self.lr_g, betas=BETAS), device, self.amp_dtype)
        objective = InversionObjective(self.teachers, cfg, student, self.momentum)
        used: set[int] = set()
        for step in range(self.steps):
            with stepper.autocast():
                x = to_model_input(g(z, y), self.teachers.info)
            out = objective(x, y, batch_index, gen, stepper.autocast)
            used.update(out.teachers)
            stepper.step(out.loss)
            if on_step is not None and (step % log_every == 0 or step == self.steps - 1):
                on_step(step, out.parts())
        with torch.no_grad():
            x = to_model_input(g(z, y).float(), self.teachers.info)
        if self.momentum is not None:
            for i in sorted(used):
                self.momentum.update(i, self.teachers.last_bn_statistics(i))
        if self.meta_optimizer is not None:
            self._reptile_step(g)
        return Inverted(x, y, out.parts(), sum(1 << i for i in used))

    def _reptile_step(self, refined: nn.Module) -> None:
        """Move the generator's start towards `refined`: gradient = start - refined, one Adam step."""
        self.meta_optimizer.zero_grad()
        for p, q in zip(self.generator.parameters(), refined.parameters()):
            p.grad = (p.detach() - q.detach()).clone()
        self.meta_optimizer.step()
        for b, c in zip(self.generator.buffers(), refined.buffers()):
            b.copy_(c)  # BN running statistics follow the refined copy (they only matter in eval mode)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.state_dict(),
                "meta_optimizer": self.meta_optimizer.state_dict() if self.meta_optimizer else {},
                "bn_momentum": self.momentum.state_dict() if self.momentum else {}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.load_state_dict(state["generator"])
        if self.meta_optimizer is not None:
            self.meta_optimizer.load_state_dict(state["meta_optimizer"])
        if self.momentum is not None:
            self.momentum.load_state_dict(state["bn_momentum"])
