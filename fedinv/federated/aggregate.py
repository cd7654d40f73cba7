"""Aggregation rules as pure functions of state dicts."""

from __future__ import annotations

from typing import Sequence

import torch


def weighted_average(states: Sequence[dict[str, torch.Tensor]], weights: Sequence[float]) -> dict[str, torch.Tensor]:
    """FedAvg: sum_i w_i * state_i with w normalized to sum to 1.

    Floating tensors (weights, BN running statistics) are averaged in float64 and cast back;
    integer buffers (BN `num_batches_tracked`) take the maximum, as they count, not estimate.
    """
    if not states:
        raise ValueError("nothing to average")
    if len(states) != len(weights):
        raise ValueError(f"{len(states)} states but {len(weights)} weights")
    w = torch.tensor(weights, dtype=torch.float64)
    if (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"weights must be non-negative with a positive sum, got {list(weights)}")
    w = w / w.sum()
    keys = states[0].keys()
    for i, s in enumerate(states[1:], 1):
        if s.keys() != keys:
            raise ValueError(f"state {i} has different keys from state 0")
    out = {}
    for k in keys:
        ref = states[0][k]
        if ref.is_floating_point():
            out[k] = sum(wi * s[k].double() for wi, s in zip(w, states)).to(ref.dtype)
        else:
            out[k] = torch.stack([s[k] for s in states]).max(0).values
    return out
