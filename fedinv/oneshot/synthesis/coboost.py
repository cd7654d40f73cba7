"""`--method coboost` (Co-Boosting, "Enhancing One-Shot Federated Learning Through Data and Ensemble
Co-Boosting", ICLR 2024; read in rong-dai/Co-Boosting, `datafree/synthesis/coboost.py`): every batch
starts from a freshly initialized generator (DCGAN-style weights, drawn from the batch's own stream),
which with the batch's latent codes takes `steps` Adam steps at `lr_g` (codes included, as the
reference); the images of the step with the lowest loss are kept. Its CE weighs each image by
(1 - p)^hard, p the teacher's probability of the target, so the generator works on what the teachers
still find hard; against a student (the online student's rounds), the shared objective's competition
term plays Co-Boosting's adversarial term (images where student and teachers disagree). Since
nothing carries from batch to batch, batches can be split over processes like deepinversion's.

The reference's other two parts live with the student: ODS perturbations of each KD batch
(`StudentConfig.ods_eta`) and per-node ensemble weights learned on the pool (`ensemble_lr`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from ...config import COUNT, LEARNING_RATE, MOMENTUM, WEIGHT, option
from ...errors import ConfigError
from ...models import place
from ...models.generators import ImageGenerator
from ...runtime import Stream, rng
from .generator import GeneratorParams, GeneratorSynthesizer
from .registry import register_method

if TYPE_CHECKING:
    from .config import SynthesisConfig


@dataclass(frozen=True)
class CoBoostParams(GeneratorParams):
    """[synthesis.coboost]: Co-Boosting's settings (its co_boosting.sh: 30 steps at lr 1e-3 for the
    generator and the codes, hs = 1)."""

    steps: int = option(30, "generator steps per batch", valid=COUNT)
    lr_g: float = option(1e-3, "Adam learning rate of the generator within a batch", valid=LEARNING_RATE)
    lr_z: float = option(1e-3, "Adam learning rate of the batch's latent codes (0 = codes fixed)", valid=WEIGHT)
    bn_momentum: float = option(0.0, "BN statistics compared as (1 - m) x this batch's + m x a running average "
                                     "over past batches (Fast-Datafree); 0 = each batch alone", valid=MOMENTUM)
    hard: float = option(1.0, "hard-sample exponent h: each image's CE weighed by (1 - p)^h, p the teacher's "
                              "probability of its target (Co-Boosting's hs); 0 = plain CE", valid=WEIGHT)


def reset_generator(g: nn.Module, gen: torch.Generator) -> nn.Module:
    """DCGAN-style weights, as the reference's reset: convolutions and linear layers N(0, 0.02) with
    zero bias, BatchNorm scales N(1, 0.02) with zero shift; drawn from `gen`."""
    with torch.no_grad():
        for m in g.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * 0.02)
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(1 + torch.randn(m.weight.shape, generator=gen) * 0.02)
                m.bias.zero_()
    return g


@register_method
class CoBoost(GeneratorSynthesizer):
    name = "coboost"
    Params = CoBoostParams
    summary = "a fresh generator per batch, its CE weighed towards hard images (Co-Boosting)"
    carries_state = False
    keep_best = True
    legacy = {}

    @classmethod
    def check(cls, cfg: "SynthesisConfig") -> None:
        if cfg.params.bn_momentum:
            raise ConfigError("coboost starts every batch afresh and carries no BN averages: keep bn_momentum = 0")

    @property
    def hard_samples(self) -> float:
        return self.params.hard

    def batch_generator(self, batch_index: int) -> nn.Module:
        """A fresh generator, its weights drawn from (seed, batch) alone."""
        p, info = self.params, self.teachers.info
        g = ImageGenerator(p.nz, info.num_classes, info.channels, info.image_size, width=p.generator_width,
                           conditional=p.conditional)
        reset_generator(g, rng(self.cfg.seed, Stream.SYNTHESIS_BATCH_GENERATOR, batch_index))
        return place(g, self.teachers.device).train()

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
