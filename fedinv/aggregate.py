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


def apply_server_lr(global_state: dict[str, torch.Tensor], average: dict[str, torch.Tensor],
                    server_lr: float = 1.0) -> dict[str, torch.Tensor]:
    """w_global + server_lr * (average - w_global) on floating tensors; buffers that count
    (integers) are taken from `average`. server_lr = 1 is plain FedAvg."""
    out = {}
    for k, avg in average.items():
        g = global_state[k]
        out[k] = (g.double() + server_lr * (avg.double() - g.double())).to(g.dtype) if g.is_floating_point() else avg
    return out


def feddyn_aggregate(global_state: dict[str, torch.Tensor], states: Sequence[dict[str, torch.Tensor]],
                     weights: Sequence[float], h: dict[str, torch.Tensor], alpha: float,
                     num_nodes: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """FedDyn's server (Acar et al. 2021, Algorithm 1), for the parameters named in `h`:

        h     <- h - alpha * (|P| / N) * sum_k w_k (theta_k - theta_global)
        theta <- sum_k w_k theta_k - h / alpha

    with w the normalized `weights` over the participants P (uniform w gives the paper's
    (1/N) sum). Tensors not in `h` (BN buffers) are averaged. Returns (new global state, new h).
    """
    avg = weighted_average(states, weights)
    frac = len(states) / num_nodes
    new_h, out = {}, dict(avg)
    for k, hk in h.items():
        drift = avg[k].double() - global_state[k].double()
        new_h[k] = (hk.double() - alpha * frac * drift).to(hk.dtype)
        out[k] = (avg[k].double() - new_h[k].double() / alpha).to(avg[k].dtype)
    return out, new_h


def scaffold_aggregate(global_state: dict[str, torch.Tensor], states: Sequence[dict[str, torch.Tensor]],
                       weights: Sequence[float], c: dict[str, torch.Tensor],
                       delta_cs: Sequence[dict[str, torch.Tensor]], num_nodes: int,
                       server_lr: float = 1.0) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """SCAFFOLD's server (Karimireddy et al. 2020, Algorithm 1, lines 16-17):

        x <- x + server_lr * (weighted mean of the participants' models - x)
        c <- c + (|S| / N) * mean_i delta_c_i

    so that c stays the mean of all N nodes' control variates. Returns (new global, new c).
    """
    if len(delta_cs) != len(states):
        raise ValueError(f"{len(states)} states but {len(delta_cs)} control-variate updates")
    new_global = apply_server_lr(global_state, weighted_average(states, weights), server_lr)
    new_c = {k: (ck.double() + sum(d[k].double() for d in delta_cs) / num_nodes).to(ck.dtype)
             for k, ck in c.items()}
    return new_global, new_c
