"""What makes fast's generator give a good student: conditional or not, steps a batch, BN momentum,
width? One record per variant and seed: the store's images/s, its audit agreement (a reference
classifier trained on real images), the student's accuracy on it, the ensemble's."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Iterator

from bench.setting import reference, run_config, splits, study_fields, teachers
from bench.tables import Table, number, pct
from fedinv.config import to_dict
from fedinv.oneshot.audit import audit_store
from fedinv.oneshot.student.report import finished_student
from fedinv.oneshot.student.train import train_student
from fedinv.oneshot.synthesis.synthesize import synthesize
from fedinv.runtime import resolve_device, save_json

QUESTION = "Which generator settings make fast's images teach the student best?"


def run(cfg: dict[str, Any], seed: int, out: Path, device: str) -> Iterator[dict[str, Any]]:
    rc = run_config(cfg, seed, device)
    teachers_dir, report, _ = teachers(rc, out)
    store = out / "synthetic.h5"
    if not (out / "synthesis.json").is_file():
        t0 = time.perf_counter()
        stats = synthesize(teachers_dir, store, rc.synthesis, resume=True, progress=False)
        save_json({**stats, "wall_seconds": time.perf_counter() - t0}, out / "synthesis.json")
    stats = json.loads((out / "synthesis.json").read_text())
    _, test = splits(rc.data)
    student = finished_student(out / "student", rc.student) or train_student(
        store, out / "student", rc.student, teachers_dir=teachers_dir, test=test, progress=False)
    ref = reference(rc, out, study_fields(cfg)["reference_epochs"])
    params = rc.synthesis.params
    yield {"steps": params.steps, "lr_g": params.lr_g, "bn_momentum": params.bn_momentum,
           "generator_width": params.generator_width, "conditional": params.conditional,
           "images_per_s": stats["images"] / max(stats["seconds"], 1e-9),
           "audit_agreement": audit_store(store, ref, resolve_device(device))["reference_agreement"],
           "student_accuracy": student["test_accuracy"], "ensemble_accuracy": report["ensemble_accuracy"],
           "synthesis_seconds": stats["wall_seconds"], "synthesis_config": to_dict(rc.synthesis)}


def sweep(records: list[dict]) -> Table:
    rows = [[r["variant"], "yes" if r.get("conditional") else "no", r.get("generator_width") or 128, r["steps"],
             f"{r['lr_g']:g}", r["bn_momentum"], number(r["images_per_s"], 1), pct(r["audit_agreement"], 1),
             pct(r["student_accuracy"])] for r in records]
    return Table(["variant", "conditional", "width", "steps", "lr_g", "BN momentum", "images / s", "audit agreement",
                  "student"], rows,
                 "One seed. images/s were measured beside other jobs in most lines (see the README): compare them "
                 "only within one sweep. Conditional: 2,048 images, student 10 epochs; the rest 8,192 images, "
                 "5 epochs.")


TABLES = {"sweep": sweep}


def headline(records: list[dict]) -> str:
    best = max((r for r in records if not r.get("conditional")), key=lambda r: r["student_accuracy"], default=None)
    cond = max((r for r in records if r.get("conditional")), key=lambda r: r["student_accuracy"], default=None)
    if not (best and cond):
        return ""
    return (f"unconditional G(z): student up to {pct(best['student_accuracy'])}%; conditional G(z, y) collapses "
            f"(at most {pct(cond['student_accuracy'])}%)")
