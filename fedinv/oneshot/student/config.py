"""The student stage's config: how the student learns from the synthetic store."""

from __future__ import annotations

from dataclasses import dataclass

from ...config import (COUNT, LEARNING_RATE, MOMENTUM, SEED, SIZE, TEMPERATURE, WEIGHT, Range, check_fields,
                       device_option, option, precision_option)
from ...errors import ConfigError
from ...train import SCHEDULES


@dataclass(frozen=True)
class StudentConfig:
    """How the student learns from the synthetic store (one-shot-dataset-distillation.txt §III-A)."""

    model: str = option("bncnn", "student model: a registry name (see `fedinv models`) or a MODULE:FACTORY "
                        "such as torchvision.models:resnet18 (with --trust-model naming it)")
    init: str = option("random", "the student's starting weights: random (seeded), or teachers-mean (the teachers' "
                       "average weighted by their samples, FedDF's start; needs the teachers' architecture and "
                       "--teachers)", choices=("random", "teachers-mean"))
    epochs: int = option(30, "passes over the store", valid=COUNT)
    batch_size: int = option(256, "minibatch size", valid=COUNT)
    steps_per_epoch: int = option(0, "steps per epoch, drawn from a fresh shuffle of the whole pool (0 = one pass "
                                     "over it): with a growing pool (adaptive mode), an epoch's cost stays fixed",
                                  valid=SIZE)
    lr: float = option(0.1, "SGD learning rate", valid=LEARNING_RATE)
    momentum: float = option(0.9, "SGD momentum", valid=MOMENTUM)
    weight_decay: float = option(5e-4, "SGD weight decay", valid=WEIGHT)
    schedule: str = option("cosine", "learning-rate schedule", choices=SCHEDULES)
    kd_weight: float = option(1.0, "weight of the KD loss against the teacher ensemble", valid=WEIGHT)
    ce_weight: float = option(0.0, "weight of the CE loss on the stored target labels", valid=WEIGHT)
    temperature: float = option(4.0, "KD temperature (kd_form soft)", valid=TEMPERATURE)
    kd_form: str = option("soft", "KD targets' form: soft (Hinton KD against the ensemble's probabilities at "
                          "temperature), hard (cross-entropy on the ensemble's label of each image), confidence "
                          "(per image, p x hard + (1 - p) x soft, p the ensemble's top probability)",
                          choices=("soft", "hard", "confidence"))
    kd_source: str = option("auto", "KD targets: teachers (ensemble on the augmented batch), soft-labels (stored "
                            "in the store), auto (teachers when given)", choices=("auto", "teachers", "soft-labels"))
    augment: bool = option(True, "random crop and (where the dataset allows) flip of the synthetic images")
    mixup: bool = option(False, "mix each synthetic image with another of the batch (weight ~ U(0, 1)) before "
                                "KD; the teachers label the mixed images, so the student is queried between "
                                "the synthesized points (needs KD from the teachers and ce_weight 0)")
    ods_eta: float = option(0.0, "output-diversified sampling (Co-Boosting's KD step): each batch is moved by "
                                 "ods_eta x the sign of the gradient of the ensemble's output along a random "
                                 "direction before KD (in pixel units: Co-Boosting's 8/255 = 0.0314; 0 = off; "
                                 "needs KD from the teachers)", valid=Range(0, 1))
    ensemble_lr: float = option(0.0, "learned node weights (Co-Boosting): each epoch, one signed-gradient step of "
                                     "this size (decaying x0.99 an epoch) per batch of --ensemble-batches random "
                                     "pool batches, on the ensemble's CE against their target labels; each node's "
                                     "weight in [0, 1] scales its teacher's share of every later KD target "
                                     "(Co-Boosting's mu: 0.01; 0 = off; needs KD from the teachers)",
                                 valid=Range(0, 1))
    ensemble_batches: int = option(4, "batches of the pool each epoch's node-weight steps see (with ensemble_lr)",
                                   valid=COUNT)
    local_weight: float = option(0.0, "weight of CE on a node's own real data (with --local-node)", valid=WEIGHT)
    adaptive_batches: int = option(0, "adaptive mode: new batches synthesized against the current student and "
                                      "appended to the store every --adaptive-every epochs (0 = off)", valid=SIZE)
    adaptive_every: int = option(1, "adaptive mode: epochs between rounds of new batches (first round at epoch 1)",
                                 valid=COUNT)
    buffer_batches: int = option(16, "store reading: batches read and shuffled together (memory bound)", valid=COUNT)
    precision: str = precision_option()
    device: str = device_option()
    seed: int = option(0, "random seed of initialization and data order", valid=SEED)

    def __post_init__(self) -> None:
        check_fields(self)
        if self.kd_weight == 0 and self.ce_weight == 0 and self.local_weight == 0:
            raise ConfigError("kd_weight, ce_weight and local_weight are all 0: nothing to learn from")
        if self.ensemble_lr and self.kd_source == "soft-labels":
            raise ConfigError("ensemble_lr reweighs the teachers' KD targets; stored soft labels do not change: use "
                              "KD from the teachers (kd_source auto or teachers), or ensemble_lr 0")
        if self.ods_eta and self.kd_source == "soft-labels":
            raise ConfigError("ods_eta perturbs the images, which stored soft labels do not describe: use KD from the "
                              "teachers (kd_source auto or teachers), or ods_eta 0")
        if self.mixup and (self.ce_weight or self.kd_source == "soft-labels"):
            raise ConfigError("mixup needs KD targets from the teachers (kd_source auto or teachers) and ce_weight 0: "
                              "stored labels do not describe mixed images")
