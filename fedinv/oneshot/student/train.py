"""The student's training on the synthetic store: streamed, resumable, optionally adaptive.

Per step: a shuffled batch from the store (augmented; batches.py), KD against the teacher ensemble
(the teachers on the augmented batch, or the stored soft labels) and/or CE on the stored labels
(objective.py), plus, optionally, CE on a node's own real data. In adaptive mode, new batches are
synthesized against the current student every `adaptive_every`-th epoch and appended to the store
(adaptive.py).
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Collection, Iterator

import torch
from torch import nn

from ...aggregate import weighted_average
from ...data.datasets import DatasetInfo, ImageTensors, load_dataset
from ...distributed import World, process_group, rank_device, world_from_env
from ...errors import ConfigError
from ...evaluate import accuracy, predict_logits
from ...models import place, seeded_model
from ...runtime import MetricsLog, Stream, folder_lock, progress_bar, resolve_device, resolve_precision, rng
from ...store import meta_info, read_meta
from ...train import Stepper, lr_at_epoch, train_epoch
from ...train.resume import load_progress, save_progress
from ..synthesis.claims import use_store_claims
from ..synthesis.ensemble import TeacherEnsemble, check_student, load_ensemble
from ..synthesis.method import ensemble_path
from ..teacher_files import Teachers
from .adaptive import AdaptiveRounds, store_synthesis
from .batches import epoch_batches, epoch_steps, local_batches
from .config import StudentConfig
from .node_weights import learn_node_weights
from .objective import ods_perturb, student_objective
from .report import finished_student, write_student

log = logging.getLogger(__name__)


def train_student(store: str | Path, out_dir: str | Path, cfg: StudentConfig, *,
                  teachers_dir: str | Path | Teachers | None = None, local: ImageTensors | None = None,
                  test: ImageTensors | str | None = "auto", eval_every: int = 10, progress: bool = True,
                  world: World | None = None, trust: Collection[str] = (), tensorboard: bool = False
                  ) -> dict[str, Any]:
    """Train a student on the store; writes OUT/student.pt and OUT/report.json (resumable). A finished
    student of the same settings in `out_dir` is read back, not retrained; one of other settings is an
    error; a second process writing into `out_dir` is refused.

    `teachers_dir`: a teachers folder or `TeacherModels` (KD targets, adaptive mode); `trust` as in
    `load_checkpoint`: the `module:factory` models the teachers and the student (`cfg.model`) may be.

    `test`: test accuracy is recorded every `eval_every` epochs and after the last on this split;
    "auto" (the default) reads the test split of the store's dataset where it is on this machine (a
    warning says so where it is not); None records none. Under
    torchrun (`world` from its environment) the student trains with DistributedDataParallel: each
    rank takes every K-th batch of the same shuffled order (an effective batch of K x batch_size),
    and rank 0 writes the checkpoints and the report (the other ranks return {}).
    """
    world = world or world_from_env()
    if world.is_distributed and (cfg.adaptive_batches or cfg.local_weight):
        raise ConfigError("adaptive mode and local data run in one process; drop torchrun, or set "
                          "adaptive_batches and local_weight to 0")
    done = finished_student(out_dir, cfg)  # another student's settings there: an error
    if done is not None:
        log.info("student: %s is complete, skipped", out_dir)
        return done if world.rank == 0 else {}
    lock = folder_lock(out_dir) if world.rank == 0 else contextlib.nullcontext()  # rank 0 writes
    with process_group(world, rank_device(cfg.device, world)), lock:
        run = StudentRun.open(Path(store), cfg, teachers_dir, local, world, trust)
        if isinstance(test, str):
            if test != "auto":
                raise ConfigError(f"test must be a dataset split, None or 'auto', got {test!r}")
            test = available_test_split(run.info)
        history = run.train(Path(out_dir), test, eval_every, progress and world.rank == 0, tensorboard)
        if world.rank != 0:
            return {}
        return write_student(Path(out_dir), run.student, cfg, run.info, store=run.store, history=history,
                             kd_source=run.source, world_size=world.size, device=run.device,
                             amp_dtype=run.stepper.amp_dtype, test=test,
                             teachers_dir=teachers_dir)


def teachers_mean(student: nn.Module, teachers: TeacherEnsemble) -> dict[str, torch.Tensor]:
    """The teachers' state averaged, each weighted by the samples it reports (as a claims check left
    them), in the student's form: FedDF's starting point. The student must be the teachers' model."""
    want = {k: v.shape for k, v in student.state_dict().items()}
    states = [m.state_dict() for m in teachers.models]
    if any({k: v.shape for k, v in s.items()} != want for s in states):
        raise ConfigError("init teachers-mean needs the student to be the teachers' model (the same layers and "
                          "shapes); use init random for another architecture")
    return weighted_average(states, teachers.counts.sum(1).tolist())


def available_test_split(info: DatasetInfo) -> ImageTensors | None:
    """The test split of dataset `info` where this machine has it (nothing is downloaded); None, with a
    warning naming the way to pass one, where it has not."""
    try:
        return load_dataset(info.name, "test")
    except (ConfigError, OSError) as e:
        log.warning("the student records no test accuracy: %s's test split is not on this machine (%s); pass "
                    "test=load_dataset(DataConfig(dataset=..., download=True), 'test'), or test=None", info.name, e)
        return None


@dataclass
class StudentRun:
    """What a student's training reads: the store, the teachers (when given), the model and its
    optimizer, the KD source and the local data."""

    store: Path
    cfg: StudentConfig
    meta: dict[str, Any]
    info: DatasetInfo
    device: torch.device
    world: World
    teachers: TeacherEnsemble | None
    source: str  # "teachers" or "soft-labels"
    student: nn.Module
    stepper: Stepper
    local_batches: Iterator[tuple] | None
    adaptive: AdaptiveRounds | None

    @classmethod
    def open(cls, store: Path, cfg: StudentConfig, teachers_dir: str | Path | Teachers | None,
             local: ImageTensors | None, world: World, trust: Collection[str] = ()) -> "StudentRun":
        meta = read_meta(store)
        if meta["n_valid"] == 0 and not cfg.adaptive_batches:
            raise ConfigError(f"{store} holds no images yet (a synthesis stopped before its first batch); "
                              f"continue it by rerunning its `fedinv synthesize` command")
        info = meta_info(meta)
        device = resolve_device(rank_device(cfg.device, world))
        source = cfg.kd_source if cfg.kd_source != "auto" else ("teachers" if teachers_dir else "soft-labels")
        if (source == "teachers" or cfg.adaptive_batches) and teachers_dir is None:
            raise ConfigError("KD from the teachers and adaptive mode need --teachers")
        if (cfg.mixup or cfg.ods_eta or cfg.ensemble_lr) and source != "teachers":
            raise ConfigError("mixup, ods_eta and ensemble_lr need KD from the teachers: give --teachers")
        if cfg.local_weight and local is None:
            raise ConfigError("local_weight > 0 needs a node's data (--local-partition and --local-node)")
        synthesis = store_synthesis(meta, device) if cfg.adaptive_batches else None
        path = ensemble_path(synthesis) if synthesis else "auto"
        teachers = load_ensemble(teachers_dir, device, path, trust) if teachers_dir else None
        if teachers is not None:
            use_store_claims(teachers, meta, store)
        if teachers is not None and teachers.image_shape != info.image_shape:
            raise ConfigError(f"the teachers take {teachers.image_shape} images, the store holds {info.image_shape}")
        if teachers is not None and teachers.info.name != info.name:
            raise ConfigError(f"the teachers were trained on {teachers.info.name}, the store holds {info.name} images: "
                              f"give the teachers that made the store")
        student = place(seeded_model(cfg.model, info, cfg.seed, Stream.STUDENT_INIT, trust=trust), device)
        if teachers is not None:
            check_student(student, teachers, device)
        if cfg.init == "teachers-mean":
            if teachers is None:
                raise ConfigError("init teachers-mean starts the student from the teachers: give --teachers")
            student.load_state_dict(teachers_mean(student, teachers))
        optimizer = torch.optim.SGD(student.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                    weight_decay=cfg.weight_decay)
        local = (local_batches(local, cfg.batch_size, device, cfg.seed)
                 if local is not None and cfg.local_weight else None)
        adaptive = (AdaptiveRounds(store, synthesis, teachers, info, cfg.adaptive_batches, cfg.adaptive_every, device)
                    if synthesis is not None and teachers is not None else None)
        return cls(store, cfg, meta, info, device, world, teachers, source, student,
                   Stepper(optimizer, device, resolve_precision(cfg.precision, device)), local, adaptive)

    def train(self, out_dir: Path, test: ImageTensors | None, eval_every: int, progress: bool,
              tensorboard: bool = False) -> list[dict]:
        """Every epoch from the last saved one; returns the history of all epochs."""
        cfg, partial = self.cfg, out_dir / "partial.pt"
        start, history, pool = 0, [], self.meta["n_valid"]  # pool: the rows before any adaptive round
        saved = load_progress(partial, cfg, model=self.student, stepper=self.stepper, what="student")
        if saved is not None:
            start, history, pool = saved["epoch"], saved["history"], saved.get("pool", pool)
            if "node_weights" in saved and self.teachers is not None:
                self.teachers.node_weights = saved["node_weights"].to(self.device)
            log.info("student: resuming after epoch %d of %d", start, cfg.epochs)
        net: nn.Module = self.student
        if self.world.is_distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            net = nn.parallel.DistributedDataParallel(self.student, device_ids=ids)

        def save(epoch: int) -> None:
            if self.world.rank == 0:
                weights = {"node_weights": self.teachers.node_weights.cpu()} if cfg.ensemble_lr else {}
                save_progress(partial, epoch=epoch, model=self.student, stepper=self.stepper, config=cfg,
                              history=history, pool=pool, **weights)

        metrics_log = (MetricsLog(out_dir / "metrics.jsonl", out_dir / "tensorboard" if tensorboard else None)
                       if self.world.rank == 0 else None)
        if metrics_log is not None:
            metrics_log.start(keep=lambda line: line.get("epoch", 0) <= start)
        if cfg.adaptive_batches and start == 0:
            save(0)  # records the pool size, so a resumed run knows which rounds were appended
        for epoch in range(start, cfg.epochs):
            t0, cpu0 = time.perf_counter(), time.process_time()  # CPU time: new batches and node weights included
            fresh = {}
            if self.adaptive is not None and self.adaptive.due(epoch):
                fresh = self.adaptive.run(epoch, pool, self.student, progress)
            n = read_meta(self.store)["n_valid"]
            if cfg.ensemble_lr:
                fresh["node_weights"] = learn_node_weights(self.teachers, self.store, n, self.info, cfg.ensemble_lr,
                                                           cfg.ensemble_batches, cfg.batch_size, epoch, cfg.seed)
            steps = epoch_steps(n, cfg)
            batches = epoch_batches(self.store, n, epoch, cfg, self.info, self.world, self.device)
            bar = progress_bar(batches, total=steps // self.world.size, leave=False, unit="batch",
                               desc=f"student epoch {epoch + 1}/{cfg.epochs}", show=progress)
            w, r = self.world.size, self.world.rank
            metrics = train_epoch(net, bar, self.objective(epoch), self.stepper,
                                  lr=lambda j: lr_at_epoch(epoch + (j * w + r) / steps, cfg.epochs, cfg.lr,
                                                           cfg.schedule),
                                  on_batch=lambda j, m: bar.set_postfix(loss=f"{m['loss']:.3f}"),
                                  what=f"student epoch {epoch + 1}")
            record = {"epoch": epoch + 1, "store_images": n, "loss": metrics["loss"],
                      "train_accuracy": metrics["accuracy"], "steps_per_rank": metrics["steps"],
                      "sample_passes": metrics["samples"] * self.world.size,
                      "seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - cpu0,
                      **fresh}
            if test is not None and ((epoch + 1) % max(1, eval_every) == 0 or epoch + 1 == cfg.epochs):
                record["test_accuracy"] = accuracy(predict_logits(self.student, test, self.device), test.labels)
            history.append(record)
            if metrics_log is not None:
                metrics_log.append({**record, "lr": self.stepper.optimizer.param_groups[0]["lr"]})
            log.info("student epoch %d/%d: %s", epoch + 1, cfg.epochs,
                     ", ".join(f"{k} {v:.4g}" for k, v in record.items()
                               if k != "epoch" and isinstance(v, (int, float))))
            save(epoch + 1)
        if metrics_log is not None:
            metrics_log.close()
        return history

    def objective(self, epoch: int) -> Callable[..., dict[str, torch.Tensor]]:
        """The student's loss on one batch of `epoch`: KD and CE (`student_objective`), plus CE on local
        data; with ODS, the batch is perturbed first (directions from (seed, epoch))."""
        cfg, student = self.cfg, self.student
        ods_gen = rng(cfg.seed, Stream.STUDENT_ODS, epoch)

        def objective(model: nn.Module, x: torch.Tensor, y: torch.Tensor, soft: torch.Tensor) -> dict:
            if cfg.ods_eta:
                x = ods_perturb(self.teachers, x, cfg.ods_eta, self.info.std, ods_gen)
            if self.source == "teachers":
                targets = self.teachers.ensemble_log_probs(x)
            else:
                targets = soft.to(self.device)
            out = student_objective(model, x, y, targets, cfg)
            if self.local_batches is not None:
                xl, yl = next(self.local_batches)
                out["loss"] = out["loss"] + cfg.local_weight * nn.functional.cross_entropy(student(xl).float(), yl)
            return out
        return objective
