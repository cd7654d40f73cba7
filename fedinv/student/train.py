"""Student training on the synthetic store: streamed, resumable, optionally adaptive.

Per step: a shuffled batch from the store (augmented), KD against the teacher ensemble (the
teachers on the augmented batch, or the stored soft labels) and/or CE on the stored labels,
plus, optionally, CE on a node's own real data. In adaptive mode, new batches are synthesized
against the current student at the start of every `adaptive_every`-th epoch and appended to the
store (one-shot-dataset-distillation.txt §III-A: an initial pool, then new batches per epoch; on a
CPU a batch costs minutes, hence the spacing).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn
from tqdm.auto import tqdm

from .. import __version__
from ..checkpoint import STUDENT, ModelCheckpoint, model_spec, save_checkpoint
from ..config import StudentConfig, SynthesisConfig, from_dict, to_dict
from ..data.batches import batches, normalize, random_crop_flip
from ..data.datasets import DatasetInfo, ImageTensors
from ..errors import ConfigError
from ..evaluate import accuracy, confusion_matrix, per_class_accuracy, predict_logits
from ..inversion.synthesize import Teachers, check_student, load_teacher_set, make_batch, pixel_bounds
from ..models import build_model
from ..nodes import lr_at
from ..runtime import autocast, generator, resolve_device, resolve_precision, save_json, save_torch
from ..distributed import World, process_group, rank_device, world_from_env
from ..store import StoreWriter, iterate_store, read_meta, writer_meta
from .distill import kd_loss

log = logging.getLogger(__name__)


def store_info(meta: dict[str, Any]) -> DatasetInfo:
    """The dataset facts a store records (normalization, shape, class names)."""
    c, h, _ = meta["image_shape"]
    d = meta["dataset"]
    return DatasetInfo(d["name"], meta["num_classes"], c, h, tuple(meta["mean"]), tuple(meta["std"]),
                       tuple(d["class_names"]), d.get("hflip", True))


def student_objective(student: nn.Module, x: torch.Tensor, y: torch.Tensor, targets: torch.Tensor | None,
                      cfg: StudentConfig) -> dict[str, torch.Tensor]:
    """KD (against `targets`, teacher logits or log-probabilities [B, K]) and CE on y, weighted."""
    logits = student(x)
    out = {"loss": torch.zeros((), device=x.device), "correct": (logits.argmax(1) == y).sum()}
    if cfg.kd_weight and targets is not None:
        out["kd"] = kd_loss(logits, targets, cfg.temperature)
        out["loss"] = out["loss"] + cfg.kd_weight * out["kd"]
    if cfg.ce_weight:
        out["ce"] = nn.functional.cross_entropy(logits.float(), y)
        out["loss"] = out["loss"] + cfg.ce_weight * out["ce"]
    return out


def _cycle(data: ImageTensors, batch_size: int, device: torch.device, seed: int) -> Iterator[tuple]:
    """Endless augmented batches of a node's real data, reshuffled every pass."""
    for rnd in range(1 << 30):
        yield from batches(data, batch_size, device=device, generator=generator(seed, 5, rnd), shuffle=True,
                           augment=True)


def _initial_student(cfg: StudentConfig, info: DatasetInfo) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(generator(cfg.seed, 6).initial_seed())
        return build_model(cfg.model, info.channels, info.num_classes, info.image_size)


def adaptive_round(store: Path, teachers: Teachers, student: nn.Module, count: int, device: torch.device,
                   progress: bool) -> int:
    """Synthesize `count` batches against the current student and append them; returns n_valid."""
    meta = read_meta(store)
    if count <= 0:
        return meta["n_valid"]
    syn = from_dict(SynthesisConfig, {**meta["config"], "device": str(device)})
    amp_dtype = resolve_precision(syn.precision, device)
    was_training = student.training
    student.eval().requires_grad_(False)  # the images get gradients, the student's weights none
    with StoreWriter(store, writer_meta(meta), resume=True, chunk_rows=syn.batch_size) as writer:
        for _ in tqdm(range(count), desc="adaptive batches", leave=False, disable=not progress):
            b = math.ceil(writer.n_valid / syn.batch_size)  # indices continue past the initial pool
            rows, inv = make_batch(teachers, syn, b, syn.batch_size, bounds=pixel_bounds(teachers.info, device),
                                   amp_dtype=amp_dtype, student=student)
            writer.append(*rows)
            log.debug("adaptive batch %d: %s", b, inv.losses)
        n = writer.n_valid
    student.train(was_training).requires_grad_(True)
    return n


def mix_pairs(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """x [B, C, H, W] -> lam * x + (1 - lam) * x[perm], lam ~ U(0, 1) per image, perm a shuffle."""
    lam = torch.rand(len(x), 1, 1, 1, generator=gen).to(x.device, x.dtype)
    perm = torch.randperm(len(x), generator=gen).to(x.device)
    return lam * x + (1 - lam) * x[perm]


def train_student(store: str | Path, out_dir: str | Path, cfg: StudentConfig, *,
                  teachers_dir: str | Path | None = None, local: ImageTensors | None = None,
                  test: ImageTensors | None = None, eval_every: int = 10, progress: bool = True,
                  world: World | None = None) -> dict[str, Any]:
    """Train a student on the store; writes OUT/student.pt and OUT/report.json (resumable).

    With `test`, test accuracy is recorded every `eval_every` epochs and after the last. Under
    torchrun (`world` from its environment) the student trains with DistributedDataParallel: each
    rank takes every K-th batch of the same shuffled order (an effective batch of K x batch_size),
    and rank 0 writes the checkpoints and the report (the other ranks return {}).
    """
    world = world or world_from_env()
    if world.is_distributed and (cfg.adaptive_batches or cfg.local_weight):
        raise ConfigError("adaptive mode and local data run in one process; drop torchrun, or set "
                          "adaptive_batches and local_weight to 0")
    with process_group(world, rank_device(cfg.device, world)):
        return _train_student(Path(store), Path(out_dir), cfg, teachers_dir=teachers_dir, local=local, test=test,
                              eval_every=eval_every, progress=progress and world.rank == 0, world=world)


def _train_student(store: Path, out_dir: Path, cfg: StudentConfig, *, teachers_dir: str | Path | None,
                   local: ImageTensors | None, test: ImageTensors | None, eval_every: int, progress: bool,
                   world: World) -> dict[str, Any]:
    meta = read_meta(store)
    info = store_info(meta)
    device = resolve_device(rank_device(cfg.device, world))
    amp_dtype = resolve_precision(cfg.precision, device)
    source = cfg.kd_source if cfg.kd_source != "auto" else ("teachers" if teachers_dir else "soft-labels")
    if (source == "teachers" or cfg.adaptive_batches) and teachers_dir is None:
        raise ConfigError("KD from the teachers and adaptive mode need --teachers")
    if cfg.mixup and source != "teachers":
        raise ConfigError("mixup needs KD from the teachers: give --teachers")
    if cfg.local_weight and local is None:
        raise ConfigError("local_weight > 0 needs a node's data (--local-partition and --local-node)")
    teachers = load_teacher_set(teachers_dir, device) if teachers_dir else None
    if teachers is not None and teachers.info.image_shape != info.image_shape:
        raise ConfigError(f"the teachers take {teachers.info.image_shape} images, the store holds {info.image_shape}")
    student = _initial_student(cfg, info).to(device)
    optimizer = torch.optim.SGD(student.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    partial, start, history = out_dir / "partial.pt", 0, []
    pool = meta["n_valid"]  # the store's rows before any adaptive round of this run
    if partial.is_file():
        state = torch.load(partial, map_location="cpu", weights_only=True)
        if state["config"] == to_dict(cfg):
            student.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            start, history, pool = state["epoch"], state["history"], state.get("pool", pool)
            log.info("student: resuming after epoch %d of %d", start, cfg.epochs)
        else:
            log.warning("%s was made with another config; starting over", partial)
    if teachers is not None:
        check_student(student, teachers, device)
    local_batches = _cycle(local, cfg.batch_size, device, cfg.seed) if local is not None and cfg.local_weight else None
    pad = max(1, info.image_size // 14)
    net: nn.Module = student
    if world.is_distributed:
        net = nn.parallel.DistributedDataParallel(student, device_ids=[device.index] if device.type == "cuda" else None)

    def save_partial(epoch: int) -> None:
        if world.rank == 0:
            save_torch({"epoch": epoch, "model": student.state_dict(), "optimizer": optimizer.state_dict(),
                        "history": history, "config": to_dict(cfg), "pool": pool}, partial)

    if cfg.adaptive_batches:
        rows_per_batch = from_dict(SynthesisConfig, meta["config"]).batch_size  # of every adaptive batch
        if start == 0:
            save_partial(0)  # records the pool size, so a resumed run knows which rounds were appended

    for epoch in range(start, cfg.epochs):
        t0 = time.perf_counter()
        if cfg.adaptive_batches and epoch % cfg.adaptive_every == 0:
            # A run killed after appending (part of) this round but before its epoch checkpoint
            # appends only the missing batches (each is seeded by its index and the same student).
            rounds = epoch // cfg.adaptive_every + 1
            appended = (read_meta(store)["n_valid"] - pool) // rows_per_batch
            adaptive_round(store, teachers, student, rounds * cfg.adaptive_batches - appended, device, progress)
        n = read_meta(store)["n_valid"]
        steps = math.ceil(n / cfg.batch_size)
        student.train()
        sums = {"loss": 0.0, "correct": 0.0, "seen": 0, "steps": 0}
        gen = generator(cfg.seed, 4, epoch)
        # Ranks must share the batch order: it gets its own stream, augmentation one per rank.
        order_gen = generator(cfg.seed, 4, epoch) if world.is_distributed else gen
        if world.is_distributed:
            gen = generator(cfg.seed, 6, epoch, world.rank)
        bar = tqdm(iterate_store(store, cfg.batch_size, order_gen, cfg.buffer_batches, limit=n), total=steps,
                   desc=f"student epoch {epoch + 1}/{cfg.epochs}", leave=False, disable=not progress, unit="batch")
        usable = steps - steps % world.size  # every rank takes the same number of steps
        for i, (xb, yb, soft) in enumerate(bar):
            if i >= usable:
                break
            if i % world.size != world.rank:
                continue
            lr = lr_at(round((epoch + i / steps) * 10_000), cfg.epochs * 10_000, cfg.lr, cfg.schedule)
            for group in optimizer.param_groups:
                group["lr"] = lr
            x = xb.to(device, non_blocking=True)
            if cfg.augment:
                x = random_crop_flip(x, pad, info.hflip, gen)
            x, y = normalize(x, info), yb.to(device)
            if cfg.mixup:
                x = mix_pairs(x, gen)
            with autocast(device, amp_dtype):
                if source == "teachers":
                    targets = teachers.set.ensemble_probs(x).clamp_min(1e-8).log()
                else:
                    targets = soft.to(device)
                out = student_objective(net, x, y, targets, cfg)
                loss = out["loss"]
                if local_batches is not None:
                    xl, yl = next(local_batches)
                    loss = loss + cfg.local_weight * nn.functional.cross_entropy(student(xl).float(), yl)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            sums["loss"] += loss.item() * len(y)
            sums["correct"] += out["correct"].item()
            sums["seen"] += len(y)
            sums["steps"] += 1
            bar.set_postfix(loss=f"{sums['loss'] / sums['seen']:.3f}", lr=f"{lr:.3g}")
        record = {"epoch": epoch + 1, "store_images": n, "loss": sums["loss"] / sums["seen"],
                  "train_accuracy": sums["correct"] / sums["seen"], "steps_per_rank": sums["steps"],
                  "seconds": time.perf_counter() - t0}
        if test is not None and ((epoch + 1) % max(1, eval_every) == 0 or epoch + 1 == cfg.epochs):
            record["test_accuracy"] = accuracy(predict_logits(student, test, device), test.labels)
        history.append(record)
        log.info("student epoch %d/%d: %s", epoch + 1, cfg.epochs,
                 ", ".join(f"{k} {v:.4g}" for k, v in record.items() if k != "epoch"))
        save_partial(epoch + 1)

    if world.rank != 0:
        return {}

    report: dict[str, Any] = {"fedinv_version": __version__, "config": to_dict(cfg), "seed": cfg.seed,
                              "store": str(store), "store_images": read_meta(store)["n_valid"],
                              "kd_source": source, "world_size": world.size, "history": history}
    if test is not None:
        logits = predict_logits(student, test, device)
        report.update(test_accuracy=accuracy(logits, test.labels),
                      per_class_accuracy=per_class_accuracy(logits, test.labels, info.num_classes),
                      confusion_matrix=confusion_matrix(logits, test.labels, info.num_classes).tolist())
    teacher_report = Path(teachers_dir) / "report.json" if teachers_dir else None
    if teacher_report is not None and teacher_report.is_file():
        t = json.loads(teacher_report.read_text())
        report.update(ensemble_accuracy=t.get("ensemble_accuracy"), fedavg_accuracy=t.get("fedavg_accuracy"))
    ckpt = ModelCheckpoint(STUDENT, model_spec(cfg.model, info.channels, info.num_classes, info.image_size),
                           {k: v.detach().cpu() for k, v in student.state_dict().items()}, config=to_dict(cfg),
                           seed=cfg.seed, metrics={k: report[k] for k in ("test_accuracy",) if k in report},
                           extra={"dataset": asdict(info), "store": str(store), "teachers": meta["teachers"]})
    save_checkpoint(ckpt, out_dir / "student.pt")
    save_json(report, out_dir / "report.json")
    partial.unlink(missing_ok=True)
    return report
