"""Per-node teacher training: one teacher per node on its split, resumable, checkpoint per node.

`teachers/node-K.pt` is what a node sends to the server. Epoch checkpoints go to
`teachers/partial/node-K.pt`; a rerun skips finished nodes and continues partial ones from
their last finished epoch, drawing the same batches an uninterrupted run would.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from . import __version__
from .checkpoint import TEACHER, ModelCheckpoint, load_checkpoint, model_spec, save_checkpoint
from .config import TeacherConfig, to_dict
from .data.batches import batches
from .data.datasets import DatasetInfo, ImageTensors, load_dataset
from .data.partition import Partition
from .errors import ConfigError
from .evaluate import accuracy, class_shares, ensemble_probs, per_class_accuracy, predict_logits
from .federated.aggregate import weighted_average
from .models import build_model
from .runtime import autocast, generator, resolve_device, resolve_precision, save_json, save_torch

log = logging.getLogger(__name__)

# Fields that change where or how fast a teacher trains, not what it learns.
_RUNTIME_FIELDS = ("device",)


def lr_at(step: int, total: int, base: float, schedule: str) -> float:
    """Learning rate at optimizer step `step` of `total`."""
    if schedule == "cosine":
        return base * 0.5 * (1 + math.cos(math.pi * step / total))
    if schedule == "step":  # x0.1 at 50% and 75% of training
        return base * (0.1 ** ((step >= total // 2) + (step >= 3 * total // 4)))
    return base


def classification_objective(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """Cross-entropy on a batch; returns {"loss", "correct"}."""
    logits = model(x)
    return {"loss": nn.functional.cross_entropy(logits, y), "correct": (logits.argmax(1) == y).sum()}


def train_epoch(model: nn.Module, data: ImageTensors, optimizer: torch.optim.Optimizer, *, device: torch.device,
                gen: torch.Generator, cfg: TeacherConfig, step: int, total_steps: int,
                amp_dtype: torch.dtype | None, scaler: torch.amp.GradScaler | None, desc: str = "",
                progress: bool = True) -> dict[str, float]:
    """One pass over `data`; returns mean loss and accuracy. `step` is the global step at entry."""
    model.train()
    loss_sum = correct = seen = 0.0
    n_batches = math.ceil(len(data) / cfg.batch_size)
    bar = tqdm(batches(data, cfg.batch_size, device=device, generator=gen, shuffle=True, augment=cfg.augment),
               total=n_batches, desc=desc, leave=False, disable=not progress, unit="batch")
    for x, y in bar:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, total_steps, cfg.lr, cfg.schedule)
        with autocast(device, amp_dtype):
            out = classification_objective(model, x, y)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(out["loss"]).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            out["loss"].backward()
            optimizer.step()
        step += 1
        loss_sum += out["loss"].item() * len(y)
        correct += out["correct"].item()
        seen += len(y)
        bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")
    return {"loss": loss_sum / seen, "accuracy": correct / seen}


def initial_state(cfg: TeacherConfig, info: DatasetInfo, node: int) -> dict[str, torch.Tensor]:
    """The starting weights of `node`: shared by all nodes when `cfg.same_init`.

    Module constructors draw from torch's global generator; fork_rng keeps that draw from
    disturbing (or depending on) anything outside this function.
    """
    seed_parts = (cfg.seed, 0) if cfg.same_init else (cfg.seed, 1, node)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(generator(*seed_parts).initial_seed())
        return build_model(cfg.model, info.channels, info.num_classes, info.image_size).state_dict()


def _same_training(saved: dict[str, Any], cfg: TeacherConfig) -> list[str]:
    """Names of fields where a saved config differs from `cfg` (runtime-only fields ignored)."""
    now = to_dict(cfg)
    return [k for k in now if k not in _RUNTIME_FIELDS and saved.get(k) != now[k]]


def train_node(node: int, split: ImageTensors, test: ImageTensors, cfg: TeacherConfig, out_dir: str | Path, *,
               partition_hash: str = "", progress: bool = True) -> ModelCheckpoint:
    """Train (or continue training) the teacher of `node` on `split`; writes `node-K.pt`."""
    out_dir = Path(out_dir)
    final, partial = out_dir / f"node-{node}.pt", out_dir / "partial" / f"node-{node}.pt"
    device = resolve_device(cfg.device)
    amp_dtype = resolve_precision(cfg.precision, device)
    info = split.info
    model = build_model(cfg.model, info.channels, info.num_classes, info.image_size)
    model.load_state_dict(initial_state(cfg, info, node))
    model.to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None
    steps_per_epoch = math.ceil(len(split) / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    start_epoch, history, seconds = 0, [], 0.0

    if partial.is_file():
        state = torch.load(partial, map_location="cpu", weights_only=True)
        if not _same_training(state["config"], cfg) and state["partition_sha256"] == partition_hash:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            if scaler is not None and state.get("scaler"):
                scaler.load_state_dict(state["scaler"])
            start_epoch, history, seconds = state["epoch"], state["history"], state["seconds"]
            log.info("node %d: resuming after epoch %d of %d", node, start_epoch, cfg.epochs)
        else:
            log.warning("node %d: %s was made with another config or partition; starting over", node, partial)

    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        metrics = train_epoch(model, split, optimizer, device=device, gen=generator(cfg.seed, 2, node, epoch),
                              cfg=cfg, step=epoch * steps_per_epoch, total_steps=total_steps, amp_dtype=amp_dtype,
                              scaler=scaler, desc=f"node {node} epoch {epoch + 1}/{cfg.epochs}", progress=progress)
        seconds += time.perf_counter() - t0
        history.append(metrics)
        log.info("node %d epoch %d/%d: loss %.4f, train accuracy %.4f", node, epoch + 1, cfg.epochs,
                 metrics["loss"], metrics["accuracy"])
        save_torch({"epoch": epoch + 1, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scaler": scaler.state_dict() if scaler is not None else None, "history": history,
                    "seconds": seconds, "config": to_dict(cfg), "partition_sha256": partition_hash}, partial)

    logits = predict_logits(model, test, device)
    ckpt = ModelCheckpoint(
        kind=TEACHER,
        model=model_spec(cfg.model, info.channels, info.num_classes, info.image_size),
        state_dict={k: v.detach().cpu() for k, v in model.state_dict().items()},
        label_counts=split.label_counts(), config=to_dict(cfg), seed=cfg.seed,
        metrics={"test_accuracy": accuracy(logits, test.labels),
                 "per_class_accuracy": per_class_accuracy(logits, test.labels, info.num_classes),
                 "train_history": history, "train_seconds": seconds},
        extra={"node": node, "num_samples": len(split), "partition_sha256": partition_hash,
               "dataset": asdict(info)},
    )
    save_checkpoint(ckpt, final)
    partial.unlink(missing_ok=True)
    if partial.parent.is_dir() and not any(partial.parent.iterdir()):
        partial.parent.rmdir()
    return ckpt


def train_teachers(partition: Partition, cfg: TeacherConfig, out_dir: str | Path, *,
                   nodes: Sequence[int] | None = None, progress: bool = True,
                   train: ImageTensors | None = None, test: ImageTensors | None = None) -> dict[str, Any]:
    """Train the teachers of `nodes` (default: all) and write `report.json` over every finished node.

    A node whose `node-K.pt` exists is skipped when it was trained with the same config and
    partition; a different one is an error (use another output folder). `train`/`test` are the
    partition's dataset splits, loaded here unless given.
    """
    out_dir = Path(out_dir)
    nodes = list(range(partition.num_nodes)) if nodes is None else list(nodes)
    bad = [k for k in nodes if not 0 <= k < partition.num_nodes]
    if bad:
        raise ConfigError(f"node(s) {bad} out of range; the partition has nodes 0..{partition.num_nodes - 1}")
    train = train if train is not None else load_dataset(partition.data, "train")  # callers that hold
    test = test if test is not None else load_dataset(partition.data, "test")  # them pass them in
    if partition.num_classes != train.info.num_classes or max(int(i.max()) for i in partition.indices) >= len(train):
        raise ConfigError(f"the partition ({partition.num_classes} classes) does not fit dataset "
                          f"{train.info.name!r} ({len(train)} samples, {train.info.num_classes} classes)")
    phash = partition.content_hash()
    for node in tqdm(nodes, desc="teachers", unit="node", disable=not progress):
        final = out_dir / f"node-{node}.pt"
        if final.is_file():
            done = load_checkpoint(final)
            diff = _same_training(done.config, cfg)
            if diff or done.extra.get("partition_sha256") != phash:
                raise ConfigError(f"{final} was trained with another "
                                  f"{'config (' + ', '.join(diff) + ')' if diff else 'partition'}; "
                                  f"use another --out folder or delete it")
            log.info("node %d: %s is complete, skipped", node, final)
            continue
        train_node(node, train.subset(partition.indices[node]), test, cfg, out_dir, partition_hash=phash,
                   progress=progress)
    report = teacher_report(sorted(out_dir.glob("node-*.pt")), test, resolve_device(cfg.device))
    report.update(config=to_dict(cfg), seed=cfg.seed, partition_sha256=phash)
    save_json(report, out_dir / "report.json")
    return report


def load_teachers(paths: Sequence[str | Path]) -> list[ModelCheckpoint]:
    """Load teacher checkpoints and check they agree on classes and input shape."""
    ckpts = [load_checkpoint(p) for p in paths]
    if not ckpts:
        raise ConfigError("no teacher checkpoints (node-*.pt) found")
    first = ckpts[0]
    for p, c in zip(paths, ckpts):
        if c.num_classes != first.num_classes or c.image_shape != first.image_shape:
            raise ConfigError(f"{p}: {c.num_classes} classes, input {c.image_shape}; but {paths[0]}: "
                              f"{first.num_classes} classes, input {first.image_shape}")
        if c.label_counts is None:
            raise ConfigError(f"{p} has no label counts; it is not a node's teacher checkpoint")
    return ckpts


def teacher_report(paths: Sequence[str | Path], test: ImageTensors, device: torch.device) -> dict[str, Any]:
    """Per-node and ensemble test accuracy, and the accuracy of one-shot FedAvg of the teachers."""
    ckpts = load_teachers(paths)
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
        avg = ModelCheckpoint(TEACHER, ckpts[0].model, weighted_average(
            [c.state_dict for c in ckpts], [sum(c.label_counts) for c in ckpts]))
        report["fedavg_accuracy"] = accuracy(predict_logits(avg.build(device), test, device), test.labels)
    return report
