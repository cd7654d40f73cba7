"""What the generator methods share (`--method fast`, `--method dense`, in fast.py and dense.py):
a generator G(z) (G(z, y) with `conditional`) produces each batch and is refined for a few steps
against the inversion objective, so the cost of inversion is shared by all batches instead of paid
anew for each.

Both descend `InversionObjective` (the same function deepinversion descends) on the generator's
images, optionally with BN momentum across batches. All per-batch randomness comes from the
batch's own stream; the state carried between batches (generator, meta optimizer, BN averages) is
`state_dict()`, kept beside the store by synthesis/store.py.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from ...config import COUNT, LEARNING_RATE, MOMENTUM, WEIGHT, Range, check_fields, option
from ...errors import ConfigError
from ...models import place
from ...models.generators import ImageGenerator, to_model_input
from ...runtime import Stream, rng
from ...train import Stepper
from .method import Inverted, StepCallback
from .ensemble import TeacherEnsemble
from .hooks import BNMomentum
from .objective import InversionObjective
from .registry import SynthesisMethod

if TYPE_CHECKING:
    from .config import SynthesisConfig

BETAS = (0.5, 0.999)  # Adam betas of both references, inner and meta


@dataclass(frozen=True)
class GeneratorParams:
    """The settings every generator method takes (defaults from Fast-Datafree; each method sets its
    own steps and lr_g)."""

    steps: int = option(5, "generator steps per batch", valid=COUNT)
    lr_g: float = option(3e-3, "Adam learning rate of the generator within a batch", valid=LEARNING_RATE)
    lr_z: float = option(0.01, "Adam learning rate of the batch's latent codes (0 = codes fixed)", valid=WEIGHT)
    bn_momentum: float = option(0.9, "BN statistics compared as (1 - m) x this batch's + m x a running average "
                                     "over past batches (Fast-Datafree); 0 = each batch alone", valid=MOMENTUM)
    nz: int = option(100, "size of the generator's latent code", valid=Range(1, 65536))
    generator_width: int = option(64, "channels of the generator's first feature map (halved at the next), as "
                                      "Fast-Datafree and DENSE; 128 costs 1.6x the time (docs/results.md)",
                                  valid=Range(1, 65536))
    conditional: bool = option(False, "the generator also takes the target label as an input (off: only the "
                                      "code z, as the references' generators; on, it collapsed to one image per "
                                      "class, docs/results.md)")

    def __post_init__(self) -> None:
        check_fields(self)


class GeneratorSynthesizer(SynthesisMethod):
    """The generator of a generator method's run and what it carries between batches. `reptile`:
    each batch refines a copy of the generator and the generator (its start) moves towards the
    copy (fast); otherwise the generator itself is refined, batch after batch (dense)."""

    carries_state = True
    reptile: ClassVar[bool] = False
    keep_best: ClassVar[bool] = False  # return the images of the step with the lowest loss, not the last
    legacy = {k: k for k in ("steps", "lr_g", "lr_z", "bn_momentum", "nz", "generator_width", "conditional")}

    def __init__(self, teachers: TeacherEnsemble, cfg: "SynthesisConfig", amp_dtype: torch.dtype | None):
        self.teachers, self.cfg, self.amp_dtype = teachers, cfg, amp_dtype
        p = self.params = cfg.params
        info = teachers.info
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(rng(cfg.seed, Stream.SYNTHESIS_GENERATOR).initial_seed())
            self.generator = ImageGenerator(p.nz, info.num_classes, info.channels, info.image_size,
                                            width=p.generator_width, conditional=p.conditional)
        place(self.generator, teachers.device).train()
        self.meta_optimizer = (torch.optim.Adam(self.generator.parameters(), lr=p.reptile_lr, betas=BETAS)
                               if self.reptile else None)
        self.momentum = BNMomentum(p.bn_momentum, len(teachers)) if p.bn_momentum else None

    @classmethod
    def check(cls, cfg: "SynthesisConfig") -> None:
        if cfg.params.bn_momentum and cfg.batched == "batched":
            raise ConfigError("bn_momentum runs on the looped multi-teacher path: use --batched loop (or auto), "
                              "or --bn-momentum 0")

    @classmethod
    def ensemble_path(cls, cfg: "SynthesisConfig") -> str:
        """BN momentum needs the per-teacher loop."""
        return "loop" if cfg.params.bn_momentum else cfg.batched

    @classmethod
    def legacy_params(cls, flat: dict[str, Any], saved: bool) -> dict[str, Any]:
        """0 meant the method's default for steps and lr_g; a saved config from before
        generator_width was a field was made at width 128."""
        out = {k: v for k, v in super().legacy_params(flat, saved).items() if not (k in ("steps", "lr_g") and v == 0)}
        if saved and "generator_width" not in flat:
            out["generator_width"] = 128
        return out

    def invert(self, y: torch.Tensor, batch_index: int, gen: torch.Generator, student: nn.Module | None = None,
               on_step: StepCallback | None = None, log_every: int = 5) -> Inverted:
        """Refine the generator on targets y [B] and return its images (normalized, detached).

        Draws from `gen`: the latent codes, then per step the objective's teachers and jitter.
        """
        cfg, p, device = self.cfg, self.params, self.teachers.device
        y = y.to(device)
        z = torch.randn(len(y), p.nz, generator=gen).to(device).requires_grad_(p.lr_z > 0)
        g = self.batch_generator(batch_index)
        groups: list[dict[str, Any]] = [{"params": list(g.parameters())}]
        if p.lr_z > 0:
            groups.append({"params": [z], "lr": p.lr_z})
        stepper = Stepper(torch.optim.Adam(groups, lr=p.lr_g, betas=BETAS), device, self.amp_dtype)
        objective = InversionObjective(self.teachers, cfg, student, self.momentum, hard=self.hard_samples)
        used: set[int] = set()
        best, best_x = math.inf, None
        for step in range(p.steps):
            with stepper.autocast():
                x = to_model_input(g(z, y), self.teachers.info)
            out = objective(x, y, batch_index, gen, stepper.autocast)
            used.update(out.teachers)
            if self.keep_best and out.loss.item() < best:
                best, best_x = out.loss.item(), x.detach().float()
            stepper.step(out.loss)
            if on_step is not None and (step % log_every == 0 or step == p.steps - 1):
                on_step(step, out.parts())
        with torch.no_grad():
            x = best_x if best_x is not None else to_model_input(g(z, y).float(), self.teachers.info)
        if self.momentum is not None:
            for i in sorted(used):
                self.momentum.update(i, self.teachers.last_bn_statistics(i))
        if self.meta_optimizer is not None:
            self._reptile_step(g)
        return Inverted(x, y, out.parts(), sum(1 << i for i in used))

    @property
    def hard_samples(self) -> float:
        """The CE's hard-sample exponent (coboost's setting; 0: plain CE)."""
        return 0.0

    def batch_generator(self, batch_index: int) -> nn.Module:
        """The generator a batch refines: a copy of the meta-learned start (fast), or the generator
        itself, trained on from batch to batch (dense)."""
        return copy.deepcopy(self.generator) if self.meta_optimizer is not None else self.generator

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
