"""CIFAR-style ResNets (He et al. 2016, as in the DeepInversion/DENSE reference code):
3x3 stem without max-pool, four stages of BasicBlocks, global average pooling."""

from __future__ import annotations

import torch
from torch import nn

from .small import Norm, group_norm


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, norm: Norm = nn.BatchNorm2d):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = norm(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = norm(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), norm(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, blocks: tuple[int, int, int, int], in_channels: int, num_classes: int,
                 norm: Norm = nn.BatchNorm2d):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False), norm(64), nn.ReLU(inplace=True))
        layers, cin = [], 64
        for i, (n, cout) in enumerate(zip(blocks, (64, 128, 256, 512))):
            for j in range(n):
                layers.append(BasicBlock(cin, cout, stride=2 if i > 0 and j == 0 else 1, norm=norm))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.stem(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def resnet18(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    return ResNet((2, 2, 2, 2), in_channels, num_classes)


def resnet18_gn(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """ResNet-18 with GroupNorm(2) in place of every BatchNorm (FedDyn's and FedFTG's code)."""
    return ResNet((2, 2, 2, 2), in_channels, num_classes, norm=group_norm)


def resnet34(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    return ResNet((3, 4, 6, 3), in_channels, num_classes)
