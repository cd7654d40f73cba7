"""Label samplers: which target label each synthesized image gets."""

from __future__ import annotations

from typing import Callable

import torch

from ...errors import unknown


def uniform(counts: torch.Tensor, batch_size: int, gen: torch.Generator) -> torch.Tensor:
    """Every label equally likely (the one-shot report's setting)."""
    return torch.randint(0, counts.shape[1], (batch_size,), generator=gen)


def proportional(counts: torch.Tensor, batch_size: int, gen: torch.Generator) -> torch.Tensor:
    """Labels in proportion to the nodes' total class counts (FedFTG's customized label sampling)."""
    p = counts.sum(0).double().cpu()
    return torch.multinomial(p / p.sum(), batch_size, replacement=True, generator=gen)


def balanced(counts: torch.Tensor, batch_size: int, gen: torch.Generator) -> torch.Tensor:
    """The batch is shared equally by the teachers; each share cycles through the labels that
    teacher knows (stratified), so every teacher gets images of each of its labels in equal number.
    """
    n = counts.shape[0]
    sizes = [batch_size // n + (1 if t < batch_size % n else 0) for t in range(n)]
    out = []
    for t, size in enumerate(sizes):
        known = torch.nonzero(counts[t].cpu() > 0).flatten()
        reps = known[torch.randperm(len(known), generator=gen)].repeat(size // len(known) + 1)[:size]
        out.append(reps)
    y = torch.cat(out)
    return y[torch.randperm(len(y), generator=gen)]


def local(counts: torch.Tensor, batch_size: int, gen: torch.Generator) -> torch.Tensor:
    """Labels in proportion to the class counts of the batch's own teachers (the caller passes only
    their rows, `store.make_batch`, or every node's where a claims check left those none): the targets
    then describe the data whose BN statistics the batch is asked to match, instead of pulling against them."""
    return proportional(counts, batch_size, gen)


LABEL_SAMPLERS: dict[str, Callable[[torch.Tensor, int, torch.Generator], torch.Tensor]] = {
    "uniform": uniform, "proportional": proportional, "balanced": balanced, "local": local,
}


def sample_labels(name: str, counts: torch.Tensor, batch_size: int, gen: torch.Generator) -> torch.Tensor:
    """Target labels [batch_size] int64 from sampler `name`; counts: the teachers' [N, K] label counts."""
    if name not in LABEL_SAMPLERS:
        raise unknown("label sampler", name, LABEL_SAMPLERS)
    return LABEL_SAMPLERS[name](counts, batch_size, gen)


def sample_teachers(num_teachers: int, per_step: int, gen: torch.Generator) -> torch.Tensor:
    """Indices of `per_step` distinct teachers drawn uniformly (Algorithm 1); 0 or >= N = all."""
    if per_step <= 0 or per_step >= num_teachers:
        return torch.arange(num_teachers)
    return torch.randperm(num_teachers, generator=gen)[:per_step].sort().values
