"""`fedinv run CONFIG.toml`: the one-shot pipeline in one run folder, resumable stage by stage.

partition -> train-teachers -> synthesize -> train-student -> evaluate -> view. Each stage is
skipped when its artifact is complete and was made with the same config, and continues when it
was interrupted (teachers, synthesis and the student all resume), so rerunning a killed run
finishes it.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Collection, Sequence

import torch

from ..checkpoint import STUDENT, load_checkpoint
from ..config import DataConfig, PartitionConfig, from_tables, read_toml_tables, to_dict
from ..data.datasets import ImageTensors, load_dataset
from ..data.partition import Partition, load_partition, make_partition, save_partition
from ..errors import ConfigError, RunStateError
from ..evaluate import evaluate_checkpoint
from ..models import build_model_for
from ..runtime import RUN_RECORDS, folder_lock, log_file, resolve_device, save_json, save_png
from ..store import read_labels, read_rows
from ..train.resume import changes
from ..viz import class_grid, rows_per_class
from .student.config import StudentConfig
from .student.report import finished_student
from .student.train import train_student
from .synthesis.config import SynthesisConfig
from .synthesis.method import require_batchnorm
from .synthesis.synthesize import synthesize
from .teachers import TeacherConfig, train_teachers

log = logging.getLogger(__name__)

SECTIONS = {"data": DataConfig, "partition": PartitionConfig, "teachers": TeacherConfig,
            "synthesis": SynthesisConfig, "student": StudentConfig}


@dataclass(frozen=True)
class RunConfig:
    """All stages' configs; each TOML table [data], [partition], [teachers], [synthesis], [student]
    may set any field of its stage and leaves the rest at their defaults."""

    data: DataConfig = field(default_factory=DataConfig)
    partition: PartitionConfig = field(default_factory=PartitionConfig)
    teachers: TeacherConfig = field(default_factory=TeacherConfig)
    synthesis: SynthesisConfig = field(default_factory=SynthesisConfig)
    student: StudentConfig = field(default_factory=StudentConfig)

    def __post_init__(self) -> None:
        if self.student.local_weight:  # checked before any stage runs, not when the student starts
            raise ConfigError("[student] local_weight needs a node's real data, which `fedinv run` does not give; "
                              "set it to 0, or train the student with `fedinv train-student --local-partition "
                              "--local-node`")

    @classmethod
    def from_toml(cls, path: str | Path, overrides: Sequence[str] = ()) -> "RunConfig":
        """From a TOML file, with "table.field=value" `overrides` on top."""
        return cls(**read_toml_tables(path, {name: c() for name, c in SECTIONS.items()}, overrides))

    @classmethod
    def from_tables(cls, tables: dict[str, Any], source: str = "config") -> "RunConfig":
        """From a TOML's tables already read (unknown tables or fields are errors)."""
        return cls(**from_tables(tables, {name: c() for name, c in SECTIONS.items()}, source))

    def to_dict(self) -> dict[str, Any]:
        return {name: to_dict(getattr(self, name)) for name in SECTIONS}


STAGE_OUTPUTS = {"data": ("partition.json",), "partition": ("partition.json",),
                 "teachers": ("teachers/node-*.pt", "teachers/partial/node-*.pt"), "synthesis": ("synthetic.h5",),
                 "student": ("student/student.pt", "student/partial.pt")}


def has_work(run: Path, section: str) -> bool:
    """Whether the stage of TOML table `section` has left work in `run`. A run folder may take a
    changed table whose stage has done nothing yet (a student that diverged in its first epoch
    is rerun with a lower learning rate); a stage with work refuses other settings itself too."""
    return any(any(run.glob(pattern)) for pattern in STAGE_OUTPUTS[section])


def spent_seconds(summary: Path) -> dict[str, float]:
    """The stage seconds an earlier invocation's summary recorded ({} before any): a rerun of a
    finished run adds its checks (milliseconds) instead of replacing what the run cost."""
    if not summary.is_file():
        return {}
    return {k: float(v) for k, v in json.loads(summary.read_text()).get("stage_seconds", {}).items()}


def partition_stage(cfg: RunConfig, manifest: Path, train: ImageTensors) -> Partition:
    """The run's partition: read back when `manifest` holds it, else made and written."""
    if manifest.is_file():
        part = load_partition(manifest)
        if part.config != cfg.partition or part.data != cfg.data:
            raise RunStateError(f"{manifest} was made with another partition config")
        log.info("partition: %s is complete, skipped", manifest)
        return part
    part = make_partition(train.labels.numpy(), train.info.num_classes, cfg.partition, cfg.data)
    save_partition(part, train.labels.numpy(), manifest, train.info.class_names)
    return part


def student_stage(cfg: RunConfig, run: Path, test: ImageTensors, progress: bool,
                  tensorboard: bool = False, trust: Collection[str] = ()) -> dict[str, Any]:
    """The student's report: read back when a finished student of this config is there, else trained."""
    done = finished_student(run / "student", cfg.student)
    if done is not None:
        log.info("student: %s is complete, skipped", run / "student")
        return done
    return train_student(run / "synthetic.h5", run / "student", cfg.student, teachers_dir=run / "teachers",
                         test=test, progress=progress, tensorboard=tensorboard, trust=trust)


def run_pipeline(cfg: RunConfig, run_dir: str | Path, *, progress: bool = True, tensorboard: bool = False,
                 trust: Collection[str] = ()) -> dict[str, Any]:
    """Run (or continue) every stage in `run_dir`; returns the final summary (also summary.json). A second
    process writing into `run_dir` is refused. `tensorboard`: every stage's metrics also go to
    TensorBoard event files (teachers/tensorboard, synthetic.h5.tensorboard, student/tensorboard).
    `trust`: the `module:factory` models (`models.build_model`) the teachers and the student may be."""
    with folder_lock(run_dir, RUN_RECORDS), log_file(run_dir):
        return _run_stages(cfg, Path(run_dir), progress, tensorboard, tuple(trust))


def _run_stages(cfg: RunConfig, run: Path, progress: bool, tensorboard: bool = False,
                trust: tuple[str, ...] = ()) -> dict[str, Any]:
    saved = run / "config.json"
    diff = changes(json.loads(saved.read_text()), cfg) if saved.is_file() else []
    held = [k for k in diff if has_work(run, k.split(".")[0])]
    if held:
        raise RunStateError(f"{run} holds a run with another config ({saved}: {', '.join(held)}); "
                            f"use another run folder")
    train = load_dataset(cfg.data, "train")  # what can fail before any stage runs fails before anything
    test = load_dataset(cfg.data, "test")  # is written: the data, the devices, the model names
    for stage in (cfg.teachers, cfg.synthesis, cfg.student):
        resolve_device(stage.device)
    with torch.device("meta"):  # unknown model names fail here
        teacher = build_model_for(cfg.teachers.model, train.info, trust)
        build_model_for(cfg.student.model, train.info, trust)
    require_batchnorm([teacher], cfg.synthesis, [f"teachers.model {cfg.teachers.model!r}"])
    save_json(cfg.to_dict(), saved)
    seconds = spent_seconds(run / "summary.json")
    clock = time.perf_counter()

    def lap(stage: str) -> None:  # wall time of each stage, summed over the invocations that ran it
        nonlocal clock
        seconds[stage] = seconds.get(stage, 0.0) + time.perf_counter() - clock
        clock = time.perf_counter()

    part = partition_stage(cfg, run / "partition.json", train)
    lap("partition")

    teacher_report = train_teachers(part, cfg.teachers, run / "teachers", progress=progress, train=train, test=test,
                                    tensorboard=tensorboard, trust=trust)
    lap("train_teachers")
    syn = synthesize(run / "teachers", run / "synthetic.h5", cfg.synthesis, resume=True, progress=progress,
                     tensorboard=tensorboard, trust=trust)
    log.info("synthesis: %s", {k: syn[k] for k in ("batches", "n_valid")})
    lap("synthesize")

    student_report = student_stage(cfg, run, test, progress, tensorboard, trust)
    lap("train_student")
    ckpt = load_checkpoint(run / "student" / "student.pt", kind=STUDENT, trust=trust)
    evaluation, picture = evaluate_checkpoint(ckpt, test, resolve_device(cfg.student.device))
    save_json(evaluation, run / "evaluation.json")
    save_png(picture, run / "confusion.png")
    lap("evaluate")
    labels = read_labels(run / "synthetic.h5").numpy()
    images, labels_t, _ = read_rows(run / "synthetic.h5", rows_per_class(labels, 8, range(train.info.num_classes)))
    title = f"synthetic.h5: {len(labels)} images ({cfg.synthesis.method}), 8 a class"
    save_png(class_grid(images, labels_t, train.info.class_names, per_class=8, scale=3, title=title),
             run / "synthetic.png")
    lap("view")

    summary = {"fedavg_accuracy": teacher_report["fedavg_accuracy"],
               "ensemble_accuracy": teacher_report["ensemble_accuracy"],
               "student_accuracy": evaluation["accuracy"], "synthetic_images": int(len(labels)),
               "student_history": student_report["history"], "stage_seconds": seconds,
               "pictures": ["partition.png", "teachers/curves.png", "synthetic.h5.curves.png", "synthetic.png",
                            "student/curves.png", "confusion.png"]}
    save_json(summary, run / "summary.json")
    return summary
