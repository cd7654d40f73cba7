"""BatchNorm input statistics: a context manager that collects them on every forward, and a running
blend of them across batches (BN momentum, Fast-Datafree)."""

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


class BNMomentum:
    """Per teacher, an exponential average of its BN input statistics over past batches.

    Fast-Datafree's momentum: the BN-statistic loss compares the teacher's running statistics with
    (1 - rate) * this batch's + rate * the average, and after each batch the average takes the
    batch's last statistics: avg = rate * avg + (1 - rate) * batch. The first batch of a teacher is
    compared as it is. State: `state_dict()` / `load_state_dict()` (tensors only).
    """

    def __init__(self, rate: float, num_teachers: int):
        self.rate = rate
        self.average: list[list[tuple[torch.Tensor, torch.Tensor]] | None] = [None] * num_teachers

    def blender(self, i: int):
        """The blend of teacher i: (means, variances) per layer -> the ones its loss compares."""
        avg = self.average[i]
        if avg is None:
            return None
        r = self.rate
        return lambda means, variances: ([(1 - r) * m + r * a for m, (a, _) in zip(means, avg)],
                                         [(1 - r) * v + r * a for v, (_, a) in zip(variances, avg)])

    def update(self, i: int, stats: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Fold teacher i's latest per-layer (mean, var) into its average."""
        old, r = self.average[i], self.rate
        self.average[i] = stats if old is None else [(r * am + (1 - r) * m, r * av + (1 - r) * v)
                                                     for (am, av), (m, v) in zip(old, stats)]

    def state_dict(self) -> dict[str, list[torch.Tensor]]:
        return {str(i): [t for pair in avg for t in pair] for i, avg in enumerate(self.average) if avg is not None}

    def load_state_dict(self, state: dict[str, list[torch.Tensor]]) -> None:
        self.average = [None] * len(self.average)
        for i, flat in state.items():
            self.average[int(i)] = list(zip(flat[0::2], flat[1::2]))
