"""Model registry: name -> constructor taking (in_channels, num_classes, image_size).

Every model uses BatchNorm except the paper CNNs (cnn1, cnn2), whose optional BN is on by
default here too, because inversion matches BatchNorm statistics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ..errors import ConfigError, unknown
from ..runtime import rng
from .resnet import resnet18, resnet34
from .small import bncnn, cnn1, cnn2, lenet5
from .vgg import vgg11


@dataclass(frozen=True)
class ModelSpec:
    name: str
    build: Callable[..., nn.Module]
    summary: str
    min_image_size: int = 8


MODELS: dict[str, ModelSpec] = {s.name: s for s in (
    ModelSpec("bncnn", bncnn, "small BatchNorm CNN, 3 conv blocks (32-64-128); the CPU default"),
    ModelSpec("cnn1", cnn1, "FedDistill CNN1: 3x3 convs 32-64-64, FC 1024-64 (feddistill.txt IV-B), with BN",
              min_image_size=24),
    ModelSpec("cnn2", cnn2, "FedDistill CNN2: 3x3 convs 128-128-128, FC 2048 (feddistill.txt IV-B), with BN",
              min_image_size=24),
    ModelSpec("lenet5", lenet5, "LeNet-5 with BatchNorm"),
    ModelSpec("resnet18", resnet18, "CIFAR-style ResNet-18 (3x3 stem, no max-pool)"),
    ModelSpec("resnet34", resnet34, "CIFAR-style ResNet-34 (3x3 stem, no max-pool)"),
    ModelSpec("vgg11", vgg11, "VGG-11 with BatchNorm, one FC classifier", min_image_size=16),
)}


def build_model(name: str, in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """Construct registry model `name` for inputs [B, in_channels, image_size, image_size]."""
    if name not in MODELS:
        raise unknown("model", name, MODELS)
    spec = MODELS[name]
    if image_size < spec.min_image_size:
        raise ConfigError(f"model {name!r} needs images of at least {spec.min_image_size} px, got {image_size}")
    return spec.build(in_channels=in_channels, num_classes=num_classes, image_size=image_size)


def build_model_for(name: str, info) -> nn.Module:
    """Registry model `name` for a dataset's images and classes (`info`: a `DatasetInfo`)."""
    return build_model(name, info.channels, info.num_classes, info.image_size)


def seeded_model(name: str, info, seed: int, stream: int, *parts: int) -> nn.Module:
    """`build_model_for` with weights drawn from random stream (seed, stream, *parts).

    Module constructors draw from torch's global generator; fork_rng keeps that draw from
    disturbing (or depending on) anything outside this function.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(rng(seed, stream, *parts).initial_seed())
        return build_model_for(name, info)


__all__ = ["MODELS", "ModelSpec", "build_model", "build_model_for", "seeded_model"]
