"""`--method fast` (Fast-Datafree, "Up to 100x faster data-free knowledge distillation"): the
generator's meta-learned start is copied for every batch, the copy and the batch's latent codes take
`steps` Adam steps, and the start then moves towards the refined copy (a Reptile step: its gradient
is start - refined, taken by an Adam with betas 0.5, 0.999 at `meta_lr`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...config import COUNT, LEARNING_RATE, option
from .generator import GeneratorParams, GeneratorSynthesizer
from .registry import register_method


@dataclass(frozen=True)
class FastParams(GeneratorParams):
    """[synthesis.fast]: Fast-Datafree's settings (5 steps at lr 3e-3, z at 1e-2, meta lr = steps x
    lr_g unless set, BN momentum 0.9)."""

    steps: int = option(5, "generator steps per batch", valid=COUNT)
    lr_g: float = option(3e-3, "Adam learning rate of the generator within a batch", valid=LEARNING_RATE)
    meta_lr: float | None = option(None, "Adam learning rate of the Reptile step that moves the generator's start "
                                          "towards each refined generator; not set: steps x lr_g, as Fast-Datafree",
                                   valid=LEARNING_RATE)

    @property
    def reptile_lr(self) -> float:
        """The Reptile step's learning rate: meta_lr, or steps x lr_g when it is not set."""
        return self.meta_lr if self.meta_lr is not None else self.steps * self.lr_g


@register_method
class Fast(GeneratorSynthesizer):
    name = "fast"
    Params = FastParams
    summary = "a generator's meta-learned start refined for a few steps per batch (Fast-Datafree)"
    reptile = True
    legacy = {**GeneratorSynthesizer.legacy, "meta_lr": "meta_lr"}

    @classmethod
    def legacy_params(cls, flat: dict[str, Any], saved: bool) -> dict[str, Any]:
        """meta_lr 0 meant steps x lr_g: not set."""
        out = super().legacy_params(flat, saved)
        if out.get("meta_lr") == 0:
            out["meta_lr"] = None
        return out
