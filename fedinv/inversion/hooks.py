"""A context manager that collects the input statistics of every BatchNorm layer of a model."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .losses import channel_stats


@dataclass
class BNStat:
    """One BN layer on one forward pass: input mean/var [C] and the layer's running stats [C]."""

    mean: torch.Tensor
    var: torch.Tensor
    running_mean: torch.Tensor
    running_var: torch.Tensor


class BNStatistics:
    """`with BNStatistics(model) as stats:` — each forward appends one `BNStat` per BN layer.

    The hooks only record; losses are computed elsewhere (losses.bn_stat_loss). They are removed
    when the block ends. Running statistics are read at call time, so this also works when the
    model's buffers are swapped by `torch.func.functional_call` (the batched-teacher path).
    """

    def __init__(self, model: nn.Module):
        self.layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        self.stats: list[BNStat] = []
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def _hook(self, module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        mean, var = channel_stats(inputs[0])
        self.stats.append(BNStat(mean, var, module.running_mean, module.running_var))

    def __enter__(self) -> list[BNStat]:
        self.stats = []
        self._handles = [m.register_forward_pre_hook(self._hook) for m in self.layers]
        return self.stats

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
