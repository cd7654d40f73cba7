"""Generators: of the FedFTG, FedDF and FedGen server steps (fedftg-supplementary.txt,
Table 1) and of the fast and dense synthesis methods.

`ImageGenerator` (FedFTG, FedDF): G(z, y) -> images, Table 1(a) adapted to the dataset's channels
and size: FC(z) and FC(onehot(y)) each fill half of a 128 x s/4 x s/4 map; BN; conv-BN-LeakyReLU;
upsample; conv(64)-BN-LeakyReLU; upsample; conv(C); tanh. `FeatureGenerator` (FedGen): G(z, y) ->
the input of the classifier head, Table 1(b) with a smaller hidden width for CPUs.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..data.datasets import DatasetInfo
from ..errors import ConfigError


class ImageGenerator(nn.Module):
    """`conditional=False`: FC(z) fills the whole map and y is not an input (Fast-Datafree's and
    DENSE's generators); each image's class then has to come from its code z."""

    def __init__(self, nz: int, num_classes: int, channels: int, image_size: int, width: int = 128,
                 conditional: bool = True):
        super().__init__()
        if image_size % 4:
            raise ConfigError(f"the image generator (FedFTG, FedDF, fast, dense) needs an image size divisible by 4, got {image_size}")
        self.num_classes, self.s0, self.width = num_classes, image_size // 4, width
        half = width // 2 * self.s0 ** 2
        self.fc_z = nn.Linear(nz, half if conditional else 2 * half)
        self.fc_y = nn.Linear(num_classes, half) if conditional else None
        self.body = nn.Sequential(
            nn.BatchNorm2d(width),
            nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.LeakyReLU(0.2),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(width, width // 2, 3, padding=1), nn.BatchNorm2d(width // 2), nn.LeakyReLU(0.2),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(width // 2, channels, 3, padding=1), nn.Tanh(),
        )

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """z [B, nz], y [B] int64 -> images [B, C, H, W] in [-1, 1]."""
        if self.fc_y is None:
            return self.body(self.fc_z(z).view(-1, self.width, self.s0, self.s0))
        m = F.one_hot(y, self.num_classes).to(z.dtype)
        shape = (-1, self.width // 2, self.s0, self.s0)
        return self.body(torch.cat([self.fc_z(z).view(shape), self.fc_y(m).view(shape)], 1))


class FeatureGenerator(nn.Module):
    def __init__(self, nz: int, num_classes: int, feature_dim: int, hidden: int = 256):
        super().__init__()
        self.num_classes = num_classes
        self.fc_z, self.fc_y = nn.Linear(nz, hidden), nn.Linear(num_classes, hidden)
        self.body = nn.Sequential(nn.BatchNorm1d(2 * hidden), nn.Linear(2 * hidden, 2 * hidden),
                                  nn.BatchNorm1d(2 * hidden), nn.LeakyReLU(0.2), nn.Linear(2 * hidden, feature_dim))

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """z [B, nz], y [B] -> features [B, feature_dim]."""
        m = F.one_hot(y, self.num_classes).to(z.dtype)
        return self.body(torch.cat([self.fc_z(z), self.fc_y(m)], 1))


def to_model_input(images: torch.Tensor, info: DatasetInfo) -> torch.Tensor:
    """Generator output in [-1, 1] -> the normalized input the models were trained on."""
    mean = torch.tensor(info.mean, device=images.device, dtype=images.dtype).view(1, -1, 1, 1)
    std = torch.tensor(info.std, device=images.device, dtype=images.dtype).view(1, -1, 1, 1)
    return ((images + 1) / 2 - mean) / std
