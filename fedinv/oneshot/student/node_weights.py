"""Per-node ensemble weights learned on the synthetic pool (Co-Boosting's ensemble boosting; read in
rong-dai/Co-Boosting, `datafree/synthesis/coboost.py`): after each epoch's new batches, signed-gradient
steps on the cross-entropy of the weighted ensemble against the pool's target labels, the step
decaying x0.99 per epoch (DECAY, the reference's wdc), each weight kept in [0, 1] (it starts at 1). A
node whose teacher disagrees with what the synthesis made of its classes loses weight in every later
KD target."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ...data.batches import normalize
from ...data.datasets import DatasetInfo
from ...evaluate import ensemble_probs
from ...runtime import Stream, rng
from ...store import read_rows
from ..synthesis.ensemble import TeacherEnsemble

DECAY = 0.99


def signed_steps(logits: list[torch.Tensor], labels: list[torch.Tensor], class_weights: torch.Tensor,
                 weights: torch.Tensor, lr: float) -> torch.Tensor:
    """One signed-gradient step per batch: logits[j] [N, B, K] of the N teachers, labels[j] [B];
    returns the node weights [N] after the steps, each in [0, 1]."""
    w = weights.detach().clone()
    for lg, y in zip(logits, labels):
        w.requires_grad_(True)
        probs = ensemble_probs(list(lg), class_weights * w[:, None])
        loss = F.nll_loss(probs.clamp_min(1e-8).log(), y)
        (grad,) = torch.autograd.grad(loss, w)
        w = (w - lr * grad.sign()).clamp(0, 1).detach()
    return w


def learn_node_weights(teachers: TeacherEnsemble, store, n: int, info: DatasetInfo, lr: float, batches: int,
                       batch_size: int, epoch: int, seed: int) -> list[float]:
    """`batches` random batches of the pool's first n rows (drawn from (seed, epoch)), one signed step
    each at lr x DECAY^epoch; sets and returns `teachers.node_weights`."""
    gen = rng(seed, Stream.STUDENT_NODE_WEIGHTS, epoch)
    rows = torch.randperm(n, generator=gen)[:batches * batch_size].sort().values.numpy()
    images, labels, _ = read_rows(store, rows.astype(np.int64))
    order = torch.randperm(len(labels), generator=gen)
    logits, ys = [], []
    for i in range(0, len(order), batch_size):
        pick = order[i:i + batch_size]
        x = normalize(images[pick].to(teachers.device), info)
        logits.append(teachers.logits(x).float())
        ys.append(labels[pick].to(teachers.device))
    teachers.node_weights = signed_steps(logits, ys, teachers.class_weights, teachers.node_weights,
                                         lr * DECAY ** epoch)
    return teachers.node_weights.tolist()
