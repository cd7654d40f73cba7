"""Aggregation rules as pure functions of state dicts.

`weighted_average` is FedAvg's mean, weighted by the sizes the nodes report. The robust rules
(`trimmed_mean`, `coordinate_median`, `krum`, `multi_krum`, chosen by name through `combine`) ignore
the reported sizes, which a dishonest node can inflate, and bound how far one poisoned state moves
the result.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

State = dict[str, torch.Tensor]


def _check_states(states: Sequence[State]) -> None:
    if not states:
        raise ValueError("nothing to aggregate")
    keys = states[0].keys()
    for i, s in enumerate(states[1:], 1):
        if s.keys() != keys:
            raise ValueError(f"state {i} has different keys from state 0")


def weighted_average(states: Sequence[dict[str, torch.Tensor]], weights: Sequence[float]) -> dict[str, torch.Tensor]:
    """FedAvg: sum_i w_i * state_i with w normalized to sum to 1.

    Floating tensors (weights, BN running statistics) are averaged in float64 and cast back;
    integer buffers (BN `num_batches_tracked`) take the maximum, as they count, not estimate.
    """
    _check_states(states)
    if len(states) != len(weights):
        raise ValueError(f"{len(states)} states but {len(weights)} weights")
    w = torch.tensor(weights, dtype=torch.float64)
    if (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"weights must be non-negative with a positive sum, got {list(weights)}")
    w = w / w.sum()
    out = {}
    for k in states[0]:
        ref = states[0][k]
        if ref.is_floating_point():
            out[k] = sum(wi * s[k].double() for wi, s in zip(w, states)).to(ref.dtype)
        else:
            out[k] = torch.stack([s[k] for s in states]).max(0).values
    return out


def _per_coordinate(states: Sequence[State], reduce: Callable[[torch.Tensor], torch.Tensor]) -> State:
    """`reduce` [M, ...] float64 -> [...] over the M states, for every floating tensor; integer
    buffers (BN `num_batches_tracked`) take the maximum, as in `weighted_average`."""
    _check_states(states)
    out = {}
    for k, ref in states[0].items():
        stacked = torch.stack([s[k] for s in states])
        out[k] = reduce(stacked.double()).to(ref.dtype) if ref.is_floating_point() else stacked.max(0).values
    return out


def trimmed_mean(states: Sequence[State], trim: float) -> State:
    """Coordinate-wise trimmed mean (Yin et al. 2018): per coordinate, the floor(trim * M) largest
    and as many smallest of the M values are dropped and the rest averaged, unweighted. trim in
    [0, 0.5); with M too small to drop any (floor(trim * M) = 0) it is the plain mean."""
    if not 0 <= trim < 0.5:
        raise ValueError(f"trim must be in [0, 0.5), got {trim}")
    m = len(states)
    cut = int(trim * m)

    def reduce(x: torch.Tensor) -> torch.Tensor:
        return x.sort(0).values[cut:m - cut].mean(0)
    return _per_coordinate(states, reduce)


def coordinate_median(states: Sequence[State]) -> State:
    """Coordinate-wise median (Yin et al. 2018), unweighted; for an even number of states the mean
    of the two middle values."""
    def reduce(x: torch.Tensor) -> torch.Tensor:
        s, m = x.sort(0).values, x.shape[0]
        return (s[(m - 1) // 2] + s[m // 2]) / 2
    return _per_coordinate(states, reduce)


def krum_min_participants(byzantine: int) -> int:
    """The fewest states Krum and multi-Krum score with f = `byzantine` malicious ones among them: 2f + 3
    (each needs M - f - 2 >= f + 1 neighbours, more than the malicious ones)."""
    return 2 * byzantine + 3


def krum_scores(states: Sequence[State], byzantine: int) -> torch.Tensor:
    """Krum's score of each of the M states (Blanchard et al. 2017): the sum of squared distances,
    over all floating tensors, to its M - f - 2 nearest other states. Needs M > 2f + 2."""
    _check_states(states)
    m = len(states)
    if m < krum_min_participants(byzantine):
        raise ValueError(f"krum tolerates f = {byzantine} malicious nodes only with more than "
                         f"{krum_min_participants(byzantine) - 1} participants, got {m}")
    keys = [k for k, v in states[0].items() if v.is_floating_point()]
    flat = torch.stack([torch.cat([s[k].double().flatten() for k in keys]) for s in states])
    d2 = torch.cdist(flat, flat).pow(2)
    d2.fill_diagonal_(float("inf"))
    return d2.sort(1).values[:, :m - byzantine - 2].sum(1)


def krum(states: Sequence[State], byzantine: int) -> State:
    """The state with the smallest `krum_scores` (ties: the first), as it is."""
    return dict(states[kept(states, "krum", byzantine)[0]])


def multi_krum_keep(scores: torch.Tensor, byzantine: int, threshold: float = 0.0) -> list[int]:
    """The indices multi-Krum averages, given the states' `krum_scores`: all but the f with the
    largest scores (ties: the later ones left out); with `threshold` > 0 one of those f is left
    out only where its score is above `threshold` times the median score (the lower middle one for
    even M)."""
    if threshold < 0:
        raise ValueError(f"threshold must be >= 0, got {threshold}")
    drop = scores.argsort(stable=True)[len(scores) - byzantine:].tolist()
    if threshold > 0:
        drop = [i for i in drop if scores[i] > threshold * scores.median()]
    return [i for i in range(len(scores)) if i not in drop]


def multi_krum(states: Sequence[State], byzantine: int, threshold: float = 0.0,
               weights: Sequence[float] | None = None) -> State:
    """Multi-Krum (El Mhamdi et al. 2018): the mean of the M - f states with the smallest
    `krum_scores`, so that the f most outlying states are left out whole and the honest ones still
    average (Krum keeps one state: at non-IID splits one node's model alone).

    `threshold` > 0 (`multi_krum_keep`) leaves out only states far above the median score: a round
    without an outlier then averages every state, and an honest federation loses no node's update.
    0 is the paper's rule. `weights` (`capped_sizes`) weigh the kept states' mean; None: equally, the
    paper's rule.
    """
    keep = kept(states, "multi-krum", byzantine, threshold)
    return weighted_average([states[i] for i in keep], [1.0 if weights is None else weights[i] for i in keep])


def capped_sizes(sizes: Sequence[float], cap: float) -> list[float]:
    """The reported sizes, each at most `cap` times their median (the lower middle one for an even
    count): an inflated claim then weighs at most `cap` median nodes, and sizes within the cap stay
    as reported (so an honest federation's mean is unchanged). `cap` >= 1."""
    if cap < 1:
        raise ValueError(f"size cap must be >= 1 (x the median size), got {cap}")
    w = torch.tensor([float(x) for x in sizes], dtype=torch.float64)
    return w.clamp(max=cap * float(w.median())).tolist()


AGGREGATIONS = ("mean", "trimmed-mean", "median", "krum", "multi-krum")


def combine(states: Sequence[State], weights: Sequence[float], rule: str = "mean", trim: float = 0.2,
            byzantine: int = 1, krum_threshold: float = 0.0, size_cap: float = 0.0) -> State:
    """The nodes' states combined by `rule` (AGGREGATIONS): mean = `weighted_average` by `weights`;
    the robust rules ignore the weights (they are what a node reports about itself). `size_cap` > 0
    caps the weights (`capped_sizes`) of the mean, and makes multi-Krum weigh the states it keeps by
    them instead of equally."""
    if size_cap:
        weights = capped_sizes(weights, size_cap)
    if rule == "mean":
        return weighted_average(states, weights)
    if rule == "trimmed-mean":
        return trimmed_mean(states, trim)
    if rule == "median":
        return coordinate_median(states)
    if rule == "krum":
        return krum(states, byzantine)
    if rule == "multi-krum":
        return multi_krum(states, byzantine, krum_threshold, weights if size_cap else None)
    raise ValueError(f"unknown aggregation {rule!r}; one of {', '.join(AGGREGATIONS)}")


SELECTIVE = ("krum", "multi-krum")  # the rules that leave whole states out (the others weigh every one)


def kept(states: Sequence[State], rule: str, byzantine: int = 1, krum_threshold: float = 0.0) -> list[int]:
    """The indices of the states `combine` keeps whole under `rule`: Krum its choice (the smallest
    `krum_scores`, ties: the first), multi-Krum all but its f farthest (`multi_krum_keep`); every
    state for the mean, the trimmed mean and the median, which weigh them all (the latter two per
    coordinate). The one place the selective rules decide."""
    if rule not in SELECTIVE:
        return list(range(len(states)))
    scores = krum_scores(states, byzantine)
    return [int(scores.argmin())] if rule == "krum" else multi_krum_keep(scores, byzantine, krum_threshold)


def left_out(states: Sequence[State], rule: str, byzantine: int = 1, krum_threshold: float = 0.0) -> list[int]:
    """The indices of the states `combine` leaves out whole under `rule` (those `kept` does not name).
    It scores the states again (a few milliseconds for five models beside a round's training)."""
    keep = kept(states, rule, byzantine, krum_threshold)
    return [i for i in range(len(states)) if i not in keep]


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
                     num_nodes: int, mean: Callable[[Sequence[State], Sequence[float]], State] = weighted_average
                     ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """FedDyn's server (Acar et al. 2021, Algorithm 1), for the parameters named in `h`:

        h     <- h - alpha * (|P| / N) * sum_k w_k (theta_k - theta_global)
        theta <- sum_k w_k theta_k - h / alpha

    with w the normalized `weights` over the participants P (uniform w gives the paper's
    (1/N) sum); `mean` may be a robust rule (`combine`) in place of the weighted mean. Tensors not in
    `h` (BN buffers) are averaged. Returns (new global state, new h).
    """
    avg = mean(states, weights)
    frac = len(states) / num_nodes
    new_h, out = {}, dict(avg)
    for k, hk in h.items():
        drift = avg[k].double() - global_state[k].double()
        new_h[k] = (hk.double() - alpha * frac * drift).to(hk.dtype)
        out[k] = (avg[k].double() - new_h[k].double() / alpha).to(avg[k].dtype)
    return out, new_h


def scaffold_aggregate(global_state: dict[str, torch.Tensor], states: Sequence[dict[str, torch.Tensor]],
                       weights: Sequence[float], c: dict[str, torch.Tensor],
                       delta_cs: Sequence[dict[str, torch.Tensor]], num_nodes: int, server_lr: float = 1.0,
                       mean: Callable[[Sequence[State], Sequence[float]], State] = weighted_average
                       ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """SCAFFOLD's server (Karimireddy et al. 2020, Algorithm 1, lines 16-17):

        x <- x + server_lr * (weighted mean of the participants' models - x)
        c <- c + (|S| / N) * mean_i delta_c_i

    so that c stays the mean of all N nodes' control variates (`mean` may be a robust rule for the
    models, `combine`). Returns (new global, new c).
    """
    if len(delta_cs) != len(states):
        raise ValueError(f"{len(states)} states but {len(delta_cs)} control-variate updates")
    new_global = apply_server_lr(global_state, mean(states, weights), server_lr)
    new_c = {k: (ck.double() + sum(d[k].double() for d in delta_cs) / num_nodes).to(ck.dtype)
             for k, ck in c.items()}
    return new_global, new_c
