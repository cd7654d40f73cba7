"""Models from outside fedinv's registry, for the bring-your-own-teacher tests (imported by path,
as `fedinv import-teacher --model tests.byo_models:resnet18_gray` would)."""

import torchvision
from torch import nn


def resnet18_gray(num_classes: int) -> nn.Module:
    """torchvision's ResNet-18 for 1-channel 28x28 images: a 3x3 stride-1 stem, no max-pool."""
    model = torchvision.models.resnet18(num_classes=num_classes)
    model.conv1 = nn.Conv2d(1, 64, 3, 1, 1, bias=False)
    model.maxpool = nn.Identity()
    return model

