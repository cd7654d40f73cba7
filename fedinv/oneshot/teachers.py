"""The teachers stage: its config and per-node teacher training, one teacher per node on its split,
resumable, checkpoint per node.

`teachers/node-K.pt` is what a node sends to the server. Epoch checkpoints go to
`teachers/partial/node-K.pt`; a rerun skips finished nodes and continues partial ones from
their last finished epoch, drawing the same batches an uninterrupted run would.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Collection, Sequence

import torch
from torch import nn

from ..checkpoint import TEACHER, ModelCheckpoint, load_checkpoint, save_checkpoint
from ..config import (COUNT, LEARNING_RATE, MOMENTUM, SEED, SIZE, WEIGHT, check_fields, device_option, option,
                      precision_option, to_dict)
from ..data.batches import batches
from ..data.datasets import DatasetInfo, ImageTensors, load_dataset
from ..data.partition import Partition
from ..errors import ConfigError, RunStateError
from ..evaluate import accuracy, per_class_accuracy, predict_logits, teacher_report
from ..models import place, seeded_model
from ..runtime import (MetricsLog, Stream, folder_lock, progress_bar, ran_on, resolve_device, resolve_precision, rng,
                       save_json, save_png)
from ..train import SCHEDULES, Stepper, lr_at, train_epoch
from ..train.objectives import classification_objective
from ..train.resume import changes, load_progress, save_progress
from ..viz import epoch_curves
from .teacher_files import load_teacher_checkpoints, node_index

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TeacherConfig:
    """How each node trains its teacher."""

    model: str = option("bncnn", "model: a registry name (see `fedinv models`) or a MODULE:FACTORY such as "
                        "torchvision.models:resnet18 (with --trust-model naming it); it needs BatchNorm to be "
                        "inverted")
    epochs: int = option(15, "training epochs over the node's split", valid=COUNT)
    batch_size: int = option(64, "minibatch size", valid=COUNT)
    lr: float = option(0.05, "SGD learning rate", valid=LEARNING_RATE)
    momentum: float = option(0.9, "SGD momentum", valid=MOMENTUM)
    weight_decay: float = option(5e-4, "SGD weight decay", valid=WEIGHT)
    schedule: str = option("cosine", "learning-rate schedule over all steps", choices=SCHEDULES)
    augment: bool = option(True, "light augmentation: random crop with padding, and horizontal flip "
                                 "where the dataset allows it")
    same_init: bool = option(True, "start every node from the same initialization (one-shot FedAvg baseline)")
    eval_every: int = option(5, "also measure test accuracy every k epochs (into metrics.jsonl and the training "
                             "history; the last epoch always); 0: only after the last", runtime=True, valid=SIZE)
    precision: str = precision_option()
    device: str = device_option()
    seed: int = option(0, "random seed of initialization and data order", valid=SEED)

    def __post_init__(self) -> None:
        check_fields(self)


def initial_model(cfg: TeacherConfig, info: DatasetInfo, node: int, trust: Collection[str] = ()) -> nn.Module:
    """The teacher of `node` before training: one initialization for all nodes when `cfg.same_init`;
    `trust` as in `build_model`."""
    stream = (Stream.TEACHER_INIT_SHARED,) if cfg.same_init else (Stream.TEACHER_INIT, node)
    return seeded_model(cfg.model, info, cfg.seed, *stream, trust=trust)


def train_node(node: int, split: ImageTensors, test: ImageTensors, cfg: TeacherConfig, out_dir: str | Path, *,
               partition_hash: str = "", progress: bool = True, tensorboard: bool = False,
               trust: Collection[str] = ()) -> ModelCheckpoint:
    """Train (or continue training) the teacher of `node` on `split`; writes `node-K.pt` (and, with
    `tensorboard`, its metrics to OUT/tensorboard). `trust`: the `module:factory` model it may be."""
    out_dir = Path(out_dir)
    final, partial = out_dir / f"node-{node}.pt", out_dir / "partial" / f"node-{node}.pt"
    device = resolve_device(cfg.device)
    info = split.info
    model = place(initial_model(cfg, info, node, trust), device)
    amp_dtype = resolve_precision(cfg.precision, device)
    stepper = Stepper(torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                      weight_decay=cfg.weight_decay), device, amp_dtype)
    steps_per_epoch = math.ceil(len(split) / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    start_epoch, history, seconds = 0, [], 0.0
    saved = load_progress(partial, cfg, model=model, stepper=stepper, what=f"node {node}",
                          partition_sha256=partition_hash)
    if saved is not None:
        start_epoch, history, seconds = saved["epoch"], saved["history"], saved["seconds"]
        log.info("node %d: resuming after epoch %d of %d", node, start_epoch, cfg.epochs)
    board = final.parent / "tensorboard" if tensorboard else None
    metrics_log = MetricsLog(final.parent / "metrics.jsonl", board).start(
        keep=lambda line: line.get("node") != node or line.get("epoch", 0) <= start_epoch)

    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        data = batches(split, cfg.batch_size, device=device, generator=rng(cfg.seed, Stream.TEACHER_DATA, node, epoch),
                       shuffle=True, augment=cfg.augment)
        bar = progress_bar(data, total=steps_per_epoch, desc=f"node {node} epoch {epoch + 1}/{cfg.epochs}",
                           leave=False, show=progress, unit="batch")
        first = epoch * steps_per_epoch
        metrics = train_epoch(model, bar, classification_objective, stepper,
                              lr=lambda i: lr_at(first + i, total_steps, cfg.lr, cfg.schedule),
                              on_batch=lambda i, m: bar.set_postfix(loss=f"{m['loss']:.3f}",
                                                                    acc=f"{m['accuracy']:.3f}"),
                              what=f"node {node} epoch {epoch + 1}")
        seconds += time.perf_counter() - t0
        history.append({"loss": metrics["loss"], "accuracy": metrics["accuracy"]})
        line = {"node": node, "epoch": epoch + 1, "loss": metrics["loss"], "train_accuracy": metrics["accuracy"],
                "lr": stepper.optimizer.param_groups[0]["lr"], "seconds": time.perf_counter() - t0}
        if epoch + 1 == cfg.epochs or (cfg.eval_every and (epoch + 1) % cfg.eval_every == 0):
            logits = predict_logits(model, test, device)  # eval mode; draws nothing from any random stream
            history[-1]["test_accuracy"] = line["test_accuracy"] = accuracy(logits, test.labels)
        metrics_log.append(line)
        log.info("node %d epoch %d/%d: loss %.4f, train accuracy %.4f", node, epoch + 1, cfg.epochs,
                 metrics["loss"], metrics["accuracy"])
        save_progress(partial, epoch=epoch + 1, model=model, stepper=stepper, config=cfg, history=history,
                      seconds=seconds, partition_sha256=partition_hash)

    if start_epoch == cfg.epochs:  # every epoch was done before (the loop evaluated the last one otherwise)
        logits = predict_logits(model, test, device)
    ckpt = ModelCheckpoint.of(
        TEACHER, cfg.model, info, model.state_dict(), label_counts=split.label_counts(), config=to_dict(cfg),
        seed=cfg.seed,
        metrics={"test_accuracy": accuracy(logits, test.labels),
                 "per_class_accuracy": per_class_accuracy(logits, test.labels, info.num_classes),
                 "train_history": history, "train_seconds": seconds},
        extra={"node": node, "num_samples": len(split), "partition_sha256": partition_hash,
               "ran_on": ran_on(device, amp_dtype)})
    save_checkpoint(ckpt, final)
    metrics_log.close()
    partial.unlink(missing_ok=True)
    if partial.parent.is_dir() and not any(partial.parent.iterdir()):
        partial.parent.rmdir()
    return ckpt


def train_teachers(partition: Partition, cfg: TeacherConfig, out_dir: str | Path, *,
                   nodes: Sequence[int] | None = None, progress: bool = True, tensorboard: bool = False,
                   train: ImageTensors | None = None, test: ImageTensors | None = None,
                   trust: Collection[str] = ()) -> dict[str, Any]:
    """Train the teachers of `nodes` (default: all) and write `report.json` over every finished node.

    A node whose `node-K.pt` exists is skipped when it was trained with the same config and
    partition; a different one is an error (use another output folder). `train`/`test` are the
    partition's dataset splits, loaded here unless given. `tensorboard`: the metrics also go to
    OUT/tensorboard (TensorBoard event files). `trust`: the `module:factory` model `cfg.model` may be.
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
    with folder_lock(out_dir):
        return _train_nodes(partition, cfg, out_dir, nodes, train, test, progress, tensorboard, tuple(trust))


def _train_nodes(partition: Partition, cfg: TeacherConfig, out_dir: Path, nodes: list[int], train: ImageTensors,
                 test: ImageTensors, progress: bool, tensorboard: bool, trust: tuple[str, ...] = ()) -> dict[str, Any]:
    phash = partition.content_hash()
    trained = False
    for node in progress_bar(nodes, desc="teachers", unit="node", show=progress):
        final = out_dir / f"node-{node}.pt"
        if final.is_file():
            done = load_checkpoint(final, trust=trust)
            diff = changes(done.config, cfg)
            if diff or done.extra.get("partition_sha256") != phash:
                raise RunStateError(f"{final} was trained with another "
                                    f"{'config (' + ', '.join(diff) + ')' if diff else 'partition'}; "
                                    f"use another --out folder or delete it")
            log.info("node %d: %s is complete, skipped", node, final)
            continue
        train_node(node, train.subset(partition.indices[node]), test, cfg, out_dir, partition_hash=phash,
                   progress=progress, tensorboard=tensorboard, trust=trust)
        trained = True
    saved = out_dir / "report.json"
    finished = sorted(k for k in map(node_index, out_dir.glob("node-*.pt")) if k is not None)
    if not trained and saved.is_file():  # nothing new: the report over these nodes is read back, not redrawn
        report = json.loads(saved.read_text())
        if sorted(report.get("nodes") or []) == finished and report.get("partition_sha256") == phash:
            return report
    return write_teacher_report(out_dir, test, cfg, phash, trust=trust)


def write_teacher_report(out_dir: Path, test: ImageTensors, cfg: TeacherConfig, partition_hash: str,
                         trust: Collection[str] = (), **extra: Any) -> dict[str, Any]:
    """OUT/report.json over every finished `node-K.pt` in `out_dir`."""
    ckpts = load_teacher_checkpoints(sorted(out_dir.glob("node-*.pt")), trust)
    report = teacher_report(ckpts, test, resolve_device(cfg.device))
    report.update(config=to_dict(cfg), seed=cfg.seed, partition_sha256=partition_hash, **extra)
    histories = {f"node {c.extra.get('node')} ": c.metrics.get("train_history", []) for c in ckpts}
    save_png(epoch_curves(histories, ("accuracy", "test_accuracy"), "teachers: training (and test) accuracy, loss"),
             out_dir / "curves.png")
    save_json(report, out_dir / "report.json")
    return report
