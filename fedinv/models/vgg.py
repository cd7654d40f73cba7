"""VGG-11 with BatchNorm for small images: a max-pool is skipped once the map is 1 px wide."""

from __future__ import annotations

from torch import nn

VGG11 = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


def vgg11(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    layers: list[nn.Module] = []
    cin, size = in_channels, image_size
    for v in VGG11:
        if v == "M":
            if size >= 2:
                layers.append(nn.MaxPool2d(2))
                size //= 2
        else:
            layers += [nn.Conv2d(cin, v, 3, padding=1, bias=False), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
            cin = v
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, num_classes))
