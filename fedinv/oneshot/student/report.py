"""A student's record: its checkpoint, report and curves when it is done, and the test of whether a
student of a config is done already."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ... import __version__
from ...checkpoint import STUDENT, ModelCheckpoint, save_checkpoint
from ...config import to_dict
from ...data.datasets import DatasetInfo, ImageTensors
from ...errors import RunStateError
from ...evaluate import accuracy, confusion_matrix, per_class_accuracy, predict_logits
from ...runtime import ran_on, save_json, save_png
from ...store import read_meta
from ...train.resume import changes
from ...viz import epoch_curves
from ..teacher_files import Teachers
from .config import StudentConfig

def finished_student(out_dir: str | Path, cfg: StudentConfig) -> dict[str, Any] | None:
    """The report of a finished student of this config in out_dir (run-time fields aside); None when
    no student finished there. A finished student of other settings is refused (RunStateError naming
    the fields), never read back as this one."""
    path = Path(out_dir) / "report.json"
    if not path.is_file():
        return None
    done = json.loads(path.read_text())
    diff = changes(done["config"], cfg)
    if diff:
        raise RunStateError(f"{out_dir} holds a student of other settings ({', '.join(diff)}); "
                            f"use another folder")
    return done


def write_student(out_dir: Path, student: nn.Module, cfg: StudentConfig, info: DatasetInfo, *, store: Path,
                  history: list[dict], kd_source: str, world_size: int, device: torch.device,
                  amp_dtype: torch.dtype | None,
                  test: ImageTensors | None, teachers_dir: str | Path | Teachers | None) -> dict[str, Any]:
    """Write a trained student's student.pt (recording the store and its teachers), report.json (with
    its test accuracy and the teachers' figures) and curves.png, and remove the epoch checkpoint;
    returns the report."""
    meta = read_meta(store)
    report: dict[str, Any] = {"fedinv_version": __version__, "config": to_dict(cfg), "seed": cfg.seed,
                              "store": str(store), "store_images": meta["n_valid"], "kd_source": kd_source,
                              "world_size": world_size, "ran_on": ran_on(device, amp_dtype),
                              # the budget spent: images the student passed over, and the process's CPU time
                              # (this rank's; adaptive rounds' synthesis included); older records lack them
                              "sample_passes": sum(h.get("sample_passes", 0) for h in history),
                              "cpu_seconds": sum(h.get("cpu_seconds", 0.0) for h in history), "history": history}
    if test is not None:
        logits = predict_logits(student, test, device)
        report.update(test_accuracy=accuracy(logits, test.labels),
                      per_class_accuracy=per_class_accuracy(logits, test.labels, info.num_classes),
                      confusion_matrix=confusion_matrix(logits, test.labels, info.num_classes).tolist())
    teacher_report = Path(teachers_dir) / "report.json" if isinstance(teachers_dir, (str, Path)) else None
    if teacher_report is not None and teacher_report.is_file():
        t = json.loads(teacher_report.read_text())
        report.update(ensemble_accuracy=t.get("ensemble_accuracy"), fedavg_accuracy=t.get("fedavg_accuracy"))
    ckpt = ModelCheckpoint.of(STUDENT, cfg.model, info, student.state_dict(), config=to_dict(cfg),
                              seed=cfg.seed, metrics={k: report[k] for k in ("test_accuracy",) if k in report},
                              extra={"store": str(store), "teachers": meta["teachers"], "ran_on": report["ran_on"]})
    save_checkpoint(ckpt, out_dir / "student.pt")
    save_png(epoch_curves({"": history}, ("train_accuracy", "test_accuracy"), "student"), out_dir / "curves.png")
    save_json(report, out_dir / "report.json")
    (out_dir / "partial.pt").unlink(missing_ok=True)
    return report
