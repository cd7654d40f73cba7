"""Small CNNs: the CPU default `bncnn` and its GroupNorm twin `gncnn`, FedDyn's CIFAR CNN without
normalization, LeNet-5, and the FedDistill paper's CNN1 / CNN2."""

from __future__ import annotations

from typing import Callable

from torch import nn

Norm = Callable[[int], nn.Module]  # channels -> normalization layer


def group_norm(channels: int) -> nn.Module:
    """GroupNorm with 2 groups, as FedDyn's code puts in place of every BatchNorm: no running
    statistics, so nothing that follows the batches of one node or of a generator."""
    return nn.GroupNorm(2, channels)


def conv_bn(cin: int, cout: int, kernel: int = 3, padding: int = 1, norm: Norm = nn.BatchNorm2d) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel, padding=padding, bias=False), norm(cout), nn.ReLU(inplace=True)]


class BNCNN(nn.Sequential):
    """Three conv-norm-ReLU blocks (32, 64, 128 channels; max-pool after the first two), global
    average pooling, one linear layer. About 94k parameters: fast on a 2-core CPU, ~91% on
    Fashion-MNIST when trained on all of it. `norm`: BatchNorm (bncnn) or GroupNorm (gncnn)."""

    def __init__(self, in_channels: int, num_classes: int, image_size: int, width: int = 32,
                 norm: Norm = nn.BatchNorm2d):
        super().__init__(
            *conv_bn(in_channels, width, norm=norm), nn.MaxPool2d(2),
            *conv_bn(width, 2 * width, norm=norm), nn.MaxPool2d(2),
            *conv_bn(2 * width, 4 * width, norm=norm),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * width, num_classes),
        )


def bncnn(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    return BNCNN(in_channels, num_classes, image_size)


def gncnn(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    return BNCNN(in_channels, num_classes, image_size, norm=group_norm)


def feddyn_cnn(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """FedDyn's CIFAR CNN, no normalization: 5x5 convs 64-64 (valid, each followed by 2x2
    max-pool), FC 384-192-K. At 28 px the flattened features are 64 x 4 x 4."""
    s = ((image_size - 4) // 2 - 4) // 2
    return nn.Sequential(
        nn.Conv2d(in_channels, 64, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(64 * s * s, 384), nn.ReLU(inplace=True),
        nn.Linear(384, 192), nn.ReLU(inplace=True),
        nn.Linear(192, num_classes),
    )


def lenet5(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """LeNet-5 (5x5 convs 6-16, FC 120-84) with BatchNorm; padding 2 on the first conv."""
    s = ((image_size // 2) - 4) // 2  # 5x5 'same' conv, pool, 5x5 valid conv, pool
    return nn.Sequential(
        *conv_bn(in_channels, 6, 5, padding=2), nn.MaxPool2d(2),
        *conv_bn(6, 16, 5, padding=0), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(16 * s * s, 120), nn.ReLU(inplace=True),
        nn.Linear(120, 84), nn.ReLU(inplace=True),
        nn.Linear(84, num_classes),
    )


def _paper_cnn(in_channels: int, num_classes: int, image_size: int, widths: tuple[int, int, int],
               hidden: int | None) -> nn.Module:
    """Three valid 3x3 convs, 2x2 max-pool after the first two (feddistill.txt §IV-B).

    The paper's "FC 1024" (CNN1) and "FC 2048" (CNN2) are the flattened conv outputs at 32 px
    (4*4*64 and 4*4*128); CNN1 adds a 64-unit hidden layer. BatchNorm follows each conv.
    """
    s = (((image_size - 2) // 2 - 2) // 2) - 2
    c1, c2, c3 = widths
    head: list[nn.Module] = [nn.Flatten()]
    if hidden:
        head += [nn.Linear(c3 * s * s, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_classes)]
    else:
        head += [nn.Linear(c3 * s * s, num_classes)]
    return nn.Sequential(
        *conv_bn(in_channels, c1, padding=0), nn.MaxPool2d(2),
        *conv_bn(c1, c2, padding=0), nn.MaxPool2d(2),
        *conv_bn(c2, c3, padding=0), *head,
    )


def cnn1(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    return _paper_cnn(in_channels, num_classes, image_size, (32, 64, 64), hidden=64)


def cnn2(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    return _paper_cnn(in_channels, num_classes, image_size, (128, 128, 128), hidden=None)
