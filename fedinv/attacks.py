"""Dishonest nodes, simulated: what a node that lies or poisons does to what it sends, as pure
functions, for measuring what a defence is worth (experiments/robust).

Three ways a node can try to take over, in both modes:

- inflate: it reports `factor` times its real number of samples, spread evenly over every class
  (one-shot: its weight per class in the teachers' ensemble; multi-round: its weight in the mean of
  the models);
- flip: it trains on labels mapped k -> K - 1 - k, and reports the counts of the labels it trained
  on (a consistent liar: its model is confident on exactly the classes it claims);
- random: it sends a freshly initialized model with the BatchNorm statistics of its trained one
  copied in (plausible statistics, useless weights), with its real counts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import SIZE, Range, check_fields, option

ATTACKS = ("none", "inflate", "flip", "random")


@dataclass(frozen=True)
class AttackConfig:
    """Simulated dishonest nodes (table [attack]): nodes 0 .. nodes-1 attack in the way `kind` says."""

    kind: str = option("none", "what the dishonest nodes do: none; inflate (report factor x their samples, "
                       "evenly over every class); flip (train on labels k -> K-1-k and report those); random "
                       "(send fresh weights with their trained BatchNorm statistics)", choices=ATTACKS)
    nodes: int = option(1, "how many nodes are dishonest (nodes 0, 1, ...)", valid=SIZE)
    factor: float = option(1000.0, "inflate: the factor on the reported label counts", valid=Range(1, 1e9))

    def __post_init__(self) -> None:
        check_fields(self)

    def attacks(self, node: int) -> bool:
        return self.kind != "none" and node < self.nodes


def flip_labels(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """k -> K - 1 - k."""
    return num_classes - 1 - labels


def inflate_counts(counts: torch.Tensor, factor: float) -> torch.Tensor:
    """Reported label counts [K]: `factor` times the real total, the same for every class (a liar that
    wants every class claims every class)."""
    per_class = round(float(counts.sum()) * factor / counts.numel())
    return torch.full_like(counts, max(per_class, 1))


def is_bn_statistic(name: str) -> bool:
    return name.endswith(("running_mean", "running_var", "num_batches_tracked"))


def random_with_statistics(fresh: dict[str, torch.Tensor], trained: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`fresh` (an untrained model's state) with the BatchNorm running statistics of `trained`."""
    if fresh.keys() != trained.keys():
        raise ValueError("the fresh and the trained state are of different models")
    return {k: (trained[k] if is_bn_statistic(k) else v).clone() for k, v in fresh.items()}
