"""How far can the one-shot student's recipe go on real images? The same student, the same KD, on as
many real training images (their labels never read): ensemble - this ceiling is what the recipe and
the student's capacity lose; the ceiling - the synthetic student is what the synthetic images lose."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import torch

from bench.setting import run_config, splits, study_fields, teachers
from bench.study import Study
from bench.tables import Table, pct
from fedinv.config import to_dict
from fedinv.data.batches import normalize
from fedinv.data.datasets import ImageTensors
from fedinv.errors import ConfigError
from fedinv.oneshot.student.report import finished_student
from fedinv.oneshot.student.train import train_student
from fedinv.oneshot.synthesis.ensemble import load_ensemble
from fedinv.oneshot.teacher_files import Teachers, as_teachers
from fedinv.runtime import atomic_path, resolve_device, rng
from fedinv.store import StoreWriter, read_meta, store_meta

QUESTION = "Where is the gap to the ensemble: in the student's recipe or in the synthetic images?"
REAL_DRAW = 100  # the random stream of the image draw (a number no library stream uses)


def real_store(path: Path, teachers_: Teachers, train: ImageTensors, n: int, seed: int, device: torch.device,
               batch: int = 512) -> None:
    """A store of n training images drawn at random (seeded), labelled by the ensemble's argmax, with
    the ensemble's log-probabilities as soft labels, recording the teachers' hashes as every store
    does; written once (under its name only when complete)."""
    meta = store_meta(train.info, seed=seed, config={"source": "real training images", "images": n, "seed": seed},
                      teachers=teachers_.hashes())
    if path.is_file():
        if read_meta(path)["teachers"] != meta["teachers"]:
            raise ConfigError(f"{path} was made from other teachers; remove it or use another --out")
        return
    rows = torch.randperm(len(train.labels), generator=rng(seed, REAL_DRAW))[:n]
    ens = load_ensemble(teachers_, device)
    with atomic_path(path) as tmp:
        tmp.unlink()  # the writer creates the file
        with StoreWriter(tmp, meta) as w:
            for i in range(0, n, batch):
                u8 = train.images[rows[i:i + batch]]
                logp = ens.ensemble_log_probs(normalize(u8.to(device), train.info))
                w.append(u8, logp.argmax(1).cpu(), logp.cpu(), torch.full((len(u8), 2), -1, dtype=torch.int32))


def run(cfg: dict[str, Any], seed: int, out: Path, device: str) -> Iterator[dict[str, Any]]:
    n = study_fields(cfg)["images"]
    rc = run_config(cfg, seed, device)
    train, test = splits(rc.data)
    if n > len(train.labels):
        raise ConfigError(f"study.images = {n}: the training split holds {len(train.labels)} images")
    teachers_dir, report, _ = teachers(rc, out)
    store = out / f"real-{n}.h5"
    real_store(store, as_teachers(teachers_dir), train, n, seed, resolve_device(device))
    result = finished_student(out / "student", rc.student) or train_student(
        store, out / "student", rc.student, teachers_dir=teachers_dir, test=test, progress=False)
    yield {"images": n, "epochs": rc.student.epochs, "student_accuracy": result["test_accuracy"],
           "ensemble_accuracy": report["ensemble_accuracy"], "fedavg_accuracy": report["fedavg_accuracy"],
           "seconds": sum(h["seconds"] for h in result["history"]), "student_config": to_dict(rc.student)}


LABELS = {"real-8192x40": "real training images", "real-32768x10": "real training images",
          "real-8192x40-t1": "real training images, KD T = 1",
          "real-8192x40-t2": "real training images, KD T = 2",
          "real-8192x40-confidence": "real training images, KD by confidence (p x hard + (1 - p) x soft at T = 4)",
          "real-8192x40-hard": "real training images, hard labels (CE on the ensemble's argmax, no KD)"}
SYNTHETIC = {("alpha-0.5", "deepinversion"): "deepinversion, 100 iterations", ("alpha-0.5", "fast"): "fast, 5 steps",
             ("alpha-0.5-fast-steps-10", "fast"): "fast, 10 steps"}


def gap(records: list[dict]) -> Table:
    """The real-image students beside the synthetic ones of the same teachers (experiments/oneshot,
    alpha 0.5, seed 0), in equal images x epochs."""
    rows = [[LABELS.get(r["variant"], r["variant"]), f"{r['images']:,}", r["epochs"], pct(r["student_accuracy"]),
             f"{r['student_accuracy'] / r['ensemble_accuracy']:.3f}"] for r in records if r["seed"] == 0]
    oneshot = Study.find("oneshot")
    for r in map(oneshot.module.upgraded, oneshot.records()):
        label = SYNTHETIC.get((r["variant"], r["method"]))
        if label and r["seed"] == 0:
            config = r.get("configs") or r.get("config") or {}  # the first benchmark recorded none
            rows.append([label, f"{r['synthetic_images']:,}", config.get("student", {}).get("epochs"),
                         pct(r["student_accuracy"]), f"{r['student_accuracy'] / r['ensemble_accuracy']:.3f}"])
    return Table(["images the student learns from", "images", "epochs", "student", "student / ensemble"], rows,
                 "Seed 0, the alpha = 0.5 teachers; each ratio against its own record's ensemble: 88.02% for the "
                 "teachers of fedinv 0.2 (fp32), 87.95% for those of 0.3 (bf16, channels_last), which made the "
                 "T = 2 and confidence rows.")


TABLES = {"gap": gap}


def headline(records: list[dict]) -> str:
    by = {r["variant"]: r for r in records if r["seed"] == 0}
    if {"real-8192x40", "real-8192x40-hard"} <= set(by):
        soft, hard = by["real-8192x40"], by["real-8192x40-hard"]
        line = (f"real images, soft KD: {soft['student_accuracy'] / soft['ensemble_accuracy']:.3f} of the ensemble; "
                f"hard labels: {hard['student_accuracy'] / hard['ensemble_accuracy']:.3f}")
        if "real-8192x40-confidence" in by:
            c = by["real-8192x40-confidence"]
            line += f"; KD by confidence: {c['student_accuracy'] / c['ensemble_accuracy']:.3f}"
        return line
    return ""
