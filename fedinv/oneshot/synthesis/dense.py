"""`--method dense` (DENSE, "A Data-Free One-Shot Federated Learning Framework"): one generator,
never reset, takes `steps` Adam steps per batch."""

from __future__ import annotations

from dataclasses import dataclass

from ...config import COUNT, LEARNING_RATE, option
from .generator import GeneratorParams, GeneratorSynthesizer
from .registry import register_method


@dataclass(frozen=True)
class DenseParams(GeneratorParams):
    """[synthesis.dense]: DENSE's settings (30 steps at lr 1e-3; z and BN momentum as fast)."""

    steps: int = option(30, "generator steps per batch", valid=COUNT)
    lr_g: float = option(1e-3, "Adam learning rate of the generator within a batch", valid=LEARNING_RATE)


@register_method
class Dense(GeneratorSynthesizer):
    name = "dense"
    Params = DenseParams
    summary = "one generator trained on, batch after batch (DENSE)"
