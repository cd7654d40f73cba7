"""`--method deepinversion` (Sampling DeepInversion): every batch's pixels optimized from noise.

Per step: the inversion objective (objective.py: sampled teachers, jitter, CE + BN-statistic
[+ competition] terms, image priors), an Adam step on the pixels, pixels clipped to the valid
range. Batch b depends on its random stream (seed, b) alone, so batches can be split over
processes and regenerated one by one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ...config import COUNT, LEARNING_RATE, check_fields, option
from ...data.datasets import DatasetInfo
from ...train import Stepper, lr_at
from .ensemble import TeacherEnsemble
from .method import Inverted, StepCallback
from .objective import InversionObjective
from .registry import SynthesisMethod, register_method

if TYPE_CHECKING:
    from .config import SynthesisConfig

@dataclass(frozen=True)
class DeepInversionParams:
    """[synthesis.deepinversion]: one Adam run on the pixels per batch (DeepInversion's reference
    code and the report: lr 0.1 with a cosine schedule)."""

    iterations: int = option(1000, "gradient steps on the pixels per batch", valid=COUNT)
    lr: float = option(0.1, "Adam learning rate of the pixels (cosine decay to 0)", valid=LEARNING_RATE)

    def __post_init__(self) -> None:
        check_fields(self)


def pixel_bounds(info: DatasetInfo, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalized values of pixels 0 and 1 per channel, each [1, C, 1, 1]."""
    mean = torch.tensor(info.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(info.std, device=device).view(1, -1, 1, 1)
    return (0 - mean) / std, (1 - mean) / std


def invert_batch(teachers: TeacherEnsemble, y: torch.Tensor, cfg: "SynthesisConfig", *, batch_index: int,
                 bounds: tuple[torch.Tensor, torch.Tensor], gen: torch.Generator, amp_dtype: torch.dtype | None,
                 student: nn.Module | None = None, on_step: StepCallback | None = None,
                 log_every: int = 50) -> Inverted:
    """Optimize a batch of images for targets y [B] (pixels within `bounds`, each [1, C, 1, 1]) with
    `cfg.params` (DeepInversionParams).

    All randomness comes from `gen` (a CPU generator), so the same generator state regenerates
    the same batch. A fresh Adam per batch: no optimizer state carries over between batches.
    """
    p: DeepInversionParams = cfg.params
    device = teachers.device
    shape = (len(y), *teachers.image_shape)
    x = torch.randn(shape, generator=gen).to(device).requires_grad_(True)
    y = y.to(device)
    stepper = Stepper(torch.optim.Adam([x], lr=p.lr), device, amp_dtype)
    objective = InversionObjective(teachers, cfg, student)
    lo, hi = bounds
    used = 0
    for step in range(p.iterations):
        stepper.set_lr(lr_at(step, p.iterations, p.lr, "cosine"))
        out = objective(x, y, batch_index, gen, stepper.autocast)
        used |= sum(1 << i for i in out.teachers)
        stepper.step(out.loss)
        with torch.no_grad():
            x.copy_(torch.maximum(torch.minimum(x, hi), lo))
        if on_step is not None and (step % log_every == 0 or step == p.iterations - 1):
            on_step(step, out.parts())
    return Inverted(x.detach(), y, out.parts(), used)


@register_method
class DeepInversion(SynthesisMethod):
    """Every batch optimized from noise (`invert_batch`); nothing carried between batches."""

    name = "deepinversion"
    Params = DeepInversionParams
    summary = "every batch's pixels optimized from noise with Adam"
    legacy = {"iterations": "iterations", "lr": "lr"}

    def __init__(self, teachers: TeacherEnsemble, cfg: "SynthesisConfig", amp_dtype: torch.dtype | None):
        self.teachers, self.cfg, self.amp_dtype = teachers, cfg, amp_dtype
        self.bounds = pixel_bounds(teachers.info, teachers.device)

    def invert(self, y: torch.Tensor, batch_index: int, gen: torch.Generator, student: nn.Module | None = None,
               on_step: StepCallback | None = None) -> Inverted:
        return invert_batch(self.teachers, y, self.cfg, batch_index=batch_index, bounds=self.bounds, gen=gen,
                            amp_dtype=self.amp_dtype, student=student, on_step=on_step)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
