"""Predictions and metrics: accuracy, per-class accuracy, confusion matrix, teacher ensembles."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image
from torch import nn

from . import __version__
from .aggregate import weighted_average
from .checkpoint import MODEL_KINDS, ModelCheckpoint, load_checkpoint
from .data.batches import batches
from .data.datasets import ImageTensors
from .errors import ConfigError
from .viz import confusion_plot


@torch.no_grad()
def predict_logits(model: nn.Module, data: ImageTensors, device: torch.device, batch_size: int = 1000) -> torch.Tensor:
    """Logits [N, K] of `model` (in eval mode) on every image of `data`, on the CPU."""
    was_training = model.training
    model.eval()
    out = [model(x).float().cpu() for x, _ in batches(data, batch_size, device=device)]
    model.train(was_training)
    return torch.cat(out)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return (logits.argmax(1) == labels).float().mean().item()


def confusion_matrix(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """int64 [K, K]: row = true label, column = predicted label."""
    pred = logits.argmax(1)
    return torch.bincount(labels * num_classes + pred, minlength=num_classes ** 2).view(num_classes, num_classes)


def per_class_accuracy(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> list[float]:
    """Recall of each class (NaN for a class absent from `labels`)."""
    cm = confusion_matrix(logits, labels, num_classes).double()
    return (cm.diagonal() / cm.sum(1)).tolist()


def class_shares(label_counts: torch.Tensor) -> torch.Tensor:
    """[T, K] -> [T, K]: each teacher's share of all samples of each class (columns sum to 1).

    The class-level ensemble weights of FedFTG: a teacher speaks for class k in proportion to how
    much of class k it saw. A class no teacher saw gets equal weights.
    """
    counts = label_counts.double()
    total = counts.sum(0, keepdim=True)
    uniform = torch.full_like(counts, 1.0 / counts.shape[0])
    return torch.where(total > 0, counts / total.clamp_min(1), uniform)


def ensemble_probs(logits: Sequence[torch.Tensor], weights: torch.Tensor | None = None) -> torch.Tensor:
    """Combine teachers' logits [N, K] each into class probabilities [N, K].

    The mean of the teachers' softmax outputs, or with per-class weights [T, K] (columns summing
    to 1, see `class_shares`), renormalized so that each row sums to 1 (the weighted sum alone
    does not: each class is weighted separately). Probabilities, not logits, are averaged: a
    teacher trained on skewed data gives large logits to its own classes, and averaging logits lets
    it outvote the teachers that saw the true class (on Fashion-MNIST, Dirichlet 0.5: 73% vs 87%).
    """
    probs = torch.stack([lg.float().softmax(-1) for lg in logits])  # [T, N, K]
    if weights is None:
        return probs.mean(0)
    mixed = (probs * weights.to(probs.dtype)[:, None, :]).sum(0)
    return mixed / mixed.sum(-1, keepdim=True).clamp_min(torch.finfo(mixed.dtype).tiny)


def median_probs(logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """Combine teachers' logits [N, K] each into class probabilities [N, K] by, per class, the median
    of their softmax outputs (for an even number of teachers the mean of the two middle ones), rows
    renormalized: no weights, so nothing a node claims counts, and no single teacher moves a class's
    probability past what the others give it. For many nodes of similar data; at strongly non-IID
    splits the class-level weights (`class_shares`) carry information it throws away."""
    probs = torch.stack([lg.float().softmax(-1) for lg in logits]).sort(0).values  # [T, N, K]
    t = probs.shape[0]
    med = (probs[(t - 1) // 2] + probs[t // 2]) / 2
    return med / med.sum(-1, keepdim=True).clamp_min(torch.finfo(med.dtype).tiny)


def class_level_logits(logits: torch.Tensor, shares: torch.Tensor) -> torch.Tensor:
    """[M, B, K] logits of M models, [M, K] class shares (columns sum to 1) -> [B, K]: each model's
    logit for class k weighted by its share of class k (FedFTG's class-level ensemble, what its
    server step distills; `ensemble_probs` weighs probabilities instead)."""
    return (logits * shares.to(logits.dtype)[:, None, :]).sum(0)


def evaluate_checkpoint(ckpt: ModelCheckpoint | str | Path, test: ImageTensors,
                        device: torch.device | str = "cpu") -> tuple[dict, Image.Image]:
    """(report dict, confusion-matrix picture) of a model checkpoint (or the path of any fedinv
    checkpoint: teacher, student, global model) on a test split."""
    if not isinstance(ckpt, ModelCheckpoint):
        ckpt = load_checkpoint(ckpt, kind=MODEL_KINDS)
    device = torch.device(device)
    if ckpt.image_shape != test.info.image_shape or ckpt.num_classes != test.info.num_classes:
        raise ConfigError(f"the checkpoint takes {ckpt.image_shape} images of {ckpt.num_classes} classes; "
                          f"{test.info.name} has {test.info.image_shape} and {test.info.num_classes}")
    logits = predict_logits(ckpt.build(device), test, device)
    k = test.info.num_classes
    cm = confusion_matrix(logits, test.labels, k)
    report = {"fedinv_version": __version__, "dataset": test.info.name, "num_test": len(test),
              "model": ckpt.model, "accuracy": accuracy(logits, test.labels),
              "per_class_accuracy": per_class_accuracy(logits, test.labels, k), "confusion_matrix": cm.tolist()}
    return report, confusion_plot(cm.numpy(), test.info.class_names, f"{ckpt.model['name']} on {test.info.name}")


def teacher_report(ckpts: Sequence[ModelCheckpoint], test: ImageTensors, device: torch.device) -> dict[str, Any]:
    """Per-node and ensemble test accuracy of teacher checkpoints (with label counts), and the
    accuracy of one-shot FedAvg of the teachers."""
    k = test.info.num_classes
    logits = [predict_logits(c.build(device), test, device) for c in ckpts]
    counts = torch.tensor([c.label_counts for c in ckpts])
    # The headline ensemble is FedFTG's class-level one: each teacher speaks for a class in
    # proportion to its share of that class's samples (label counts travel with the teachers).
    # It is the ensemble synthesis uses for soft labels; the plain mean is reported beside it.
    class_ens, mean_ens = ensemble_probs(logits, class_shares(counts)), ensemble_probs(logits)
    report: dict[str, Any] = {
        "fedinv_version": __version__, "dataset": test.info.name, "num_test": len(test),
        "nodes": [c.extra.get("node") for c in ckpts],
        "node_accuracy": [accuracy(lg, test.labels) for lg in logits],
        "node_per_class_accuracy": [per_class_accuracy(lg, test.labels, k) for lg in logits],
        "label_counts": counts.tolist(),
        "ensemble_accuracy": accuracy(class_ens, test.labels),
        "ensemble_per_class_accuracy": per_class_accuracy(class_ens, test.labels, k),
        "ensemble_mean_accuracy": accuracy(mean_ens, test.labels),
        "fedavg_accuracy": None,
    }
    if len({c.model["name"] for c in ckpts}) == 1:  # FedAvg needs one architecture
        avg = dataclasses.replace(ckpts[0], state_dict=weighted_average(
            [c.state_dict for c in ckpts], [sum(c.label_counts) for c in ckpts]))  # its model, as trusted
        report["fedavg_accuracy"] = accuracy(predict_logits(avg.build(device), test, device), test.labels)
    return report
