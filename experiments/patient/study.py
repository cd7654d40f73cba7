"""How far does a patient student go? The one-shot benchmark's setting with a student that trains
long and online: an initial pool synthesized by the variant's method, then one new batch per epoch
synthesized against the current student and appended to the pool, and a fixed number of steps per
epoch drawn from the whole pool. Per (variant, seed) one record: the final accuracy against the
teachers' ensemble, the budget spent (the student's sample passes, the CPU minutes of the initial
synthesis and of the online student with its new batches) and the curve of test accuracy against
those CPU minutes (every `eval_every` epochs), and the student's and the ensemble's per-class test accuracy.

Runs are long (about half an hour on one core at the base budget): every piece resumes, the teachers
are shared with the study's other variants, and two seeds or variants can run side by side with
`--threads 1`.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterator

import torch

from bench.records import latest
from bench.setting import real_bn_statistics, run_config, splits, study_fields, teachers
from bench.tables import Table, mean_std
from fedinv.checkpoint import STUDENT, load_checkpoint
from fedinv.config import to_dict
from fedinv.data.datasets import ImageTensors
from fedinv.evaluate import accuracy, class_shares, predict_logits
from fedinv.oneshot.student.report import finished_student
from fedinv.oneshot.student.train import train_student
from fedinv.oneshot.synthesis.synthesize import synthesize
from fedinv.runtime import save_json
from fedinv.viz import line_plot

QUESTION = "How far does a patient online student go, and what does each CPU minute buy?"
SEEDS = (0, 1, 2)
# The figures to beat (Fashion-MNIST, 5 clients; experiments/oneshot's PUBLISHED): alpha -> accuracy %
TARGET = {0.1: 73.2, 0.3: 84.0, 0.5: 86.3}
REAL_BN_IMAGES = 8192  # real training images the diagnostic re-estimates the student's BatchNorm statistics on


def real_bn_accuracy(student: Path, train: ImageTensors, test: ImageTensors, seed: int) -> float:
    """A diagnostic, not a method (it reads real images the server never has): the student's test
    accuracy once its BatchNorm running statistics are re-estimated, labels unread, on REAL_BN_IMAGES
    real training images. Far above the student's own accuracy: the synthetic images misplace the
    student's feature statistics; near it: what the student learned, not its statistics, falls short."""
    model = load_checkpoint(student, kind=STUDENT).build(torch.device("cpu"))
    pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:REAL_BN_IMAGES]
    real_bn_statistics(model, train.subset(pick), 256)
    return accuracy(predict_logits(model, test, torch.device("cpu")), test.labels)


def run(cfg: dict[str, Any], seed: int, out: Path, device: str) -> Iterator[dict[str, Any]]:
    study = study_fields(cfg)
    rc = run_config(cfg, seed, device)
    student_cfg = rc.student
    teachers_dir, t_report, _ = teachers(rc, out)
    train, test = splits(rc.data)
    store = out / "synthetic.h5"
    synthesis_file = out / "synthesis.json"
    # The initial pool; its CPU time (this process's) is part of the budget. A pool copied from a smaller
    # variant's run (with its synthesis.json) grows to this one's size, and the CPU times add up.
    synthesis = json.loads(synthesis_file.read_text()) if synthesis_file.is_file() else {"n_valid": 0}
    if synthesis["n_valid"] < rc.synthesis.num_images:
        cpu = time.process_time()
        stats = synthesize(teachers_dir, store, rc.synthesis, progress=False)
        synthesis = {**stats, "cpu_seconds": synthesis.get("cpu_seconds", 0.0) + time.process_time() - cpu}
        save_json(synthesis, synthesis_file)
    report = finished_student(out / "student", student_cfg) or train_student(
        store, out / "student", student_cfg, teachers_dir=teachers_dir, test=test, eval_every=study["eval_every"],
        progress=False)
    start = synthesis["cpu_seconds"]
    curve, spent = [], start
    for h in report["history"]:
        spent += h["cpu_seconds"]
        if "test_accuracy" in h:
            curve.append([h["epoch"], round(spent / 60, 3), h["test_accuracy"]])
    yield {"method": rc.synthesis.method, "kd_form": student_cfg.kd_form, "alpha": rc.partition.alpha,
           "num_nodes": rc.partition.num_nodes, "ensemble_accuracy": t_report["ensemble_accuracy"],
           "fedavg_accuracy": t_report["fedavg_accuracy"], "student_accuracy": report["test_accuracy"],
           "student_real_bn_accuracy": real_bn_accuracy(out / "student" / "student.pt", train, test, seed),
           "initial_images": synthesis["n_valid"], "final_images": report["store_images"],
           "sample_passes": report["sample_passes"], "synthesis_cpu_minutes": start / 60,
           "student_cpu_minutes": report["cpu_seconds"] / 60, "cpu_minutes": spent / 60,
           "curve": curve, "student_per_class": report["per_class_accuracy"],
           "ensemble_per_class": t_report["ensemble_per_class_accuracy"], "label_counts": t_report["label_counts"],
           "configs": {"synthesis": to_dict(rc.synthesis), "student": to_dict(student_cfg)}}


def groups(records: list[dict]) -> dict[tuple, list[dict]]:
    """(alpha, variant) -> its records, one per seed (the last line of a seed counts)."""
    out: dict[tuple, list[dict]] = defaultdict(list)
    for r in sorted(latest(records), key=lambda r: r["seed"]):
        out[(r["alpha"], r["variant"])].append(r)
    return dict(sorted(out.items()))


def summary(records: list[dict]) -> Table:
    """Per alpha and variant: the student, its share of the ensemble, and the budget it spent."""
    rows = []
    for (alpha, variant), rs in groups(records).items():
        rows.append([alpha, variant, len(rs), mean_std(r["student_accuracy"] for r in rs),
                     mean_std((r["student_accuracy"] / r["ensemble_accuracy"] for r in rs), scale=1, digits=3),
                     mean_std(r.get("student_real_bn_accuracy") for r in rs),
                     mean_std(r["ensemble_accuracy"] for r in rs), TARGET.get(alpha, "-"),
                     f"{sum(r['sample_passes'] for r in rs) / len(rs) / 1e6:.2f}M",
                     f"{sum(r['cpu_minutes'] for r in rs) / len(rs):.0f}"])
    return Table(["alpha", "variant", "seeds", "student %", "student / ensemble", "the same, BN from real images %",
                  "ensemble %", "to beat %", "sample passes", "CPU min"], rows,
                 "CPU minutes: the initial synthesis and the online student with its new batches, one process "
                 "(the teachers, shared by every variant, not counted); mean ± std over the seeds. BN from real "
                 "images: a diagnostic, the student with its BatchNorm statistics re-estimated on 8,192 real "
                 "training images (labels unread; data the server never has), where recorded.")


def curve(records: list[dict]) -> Table:
    """Test accuracy at each evaluation against the CPU minutes spent so far (seed 0 of each variant)."""
    rows = []
    for (alpha, variant), rs in groups(records).items():
        first = rs[0]
        points = ", ".join(f"{m:.0f} min {a * 100:.1f}" for _, m, a in first["curve"])
        rows.append([alpha, variant, first["seed"], points])
    return Table(["alpha", "variant", "seed", "test accuracy % after CPU minutes"], rows)


def mean_student(rs: list[dict]) -> float:
    return sum(r["student_accuracy"] for r in rs) / len(rs)


def mean_ratio(rs: list[dict]) -> float:
    """The student's accuracy over its own ensemble's, averaged over the seeds: what ranks variants of one
    alpha measured on different seeds (each seed's teachers are stronger or weaker)."""
    return sum(r["student_accuracy"] / r["ensemble_accuracy"] for r in rs) / len(rs)


def best(records: list[dict]) -> Table:
    """Per alpha, the variant whose student is best on the mean over its seeds of its accuracy over its own
    ensemble's (`mean_ratio`), against the figure to beat."""
    rows = []
    by_alpha: dict[float, list[tuple[str, list[dict]]]] = defaultdict(list)
    for (alpha, variant), rs in groups(records).items():
        by_alpha[alpha].append((variant, rs))
    for alpha, variants in sorted(by_alpha.items()):
        variant, rs = max(variants, key=lambda v: mean_ratio(v[1]))
        rows.append([alpha, variant, len(rs), mean_std(r["student_accuracy"] for r in rs),
                     mean_std((r["student_accuracy"] / r["ensemble_accuracy"] for r in rs), scale=1, digits=3),
                     mean_std(r["ensemble_accuracy"] for r in rs), TARGET.get(alpha, "-"),
                     f"{sum(r['cpu_minutes'] for r in rs) / len(rs):.0f}"])
    return Table(["alpha", "best variant", "seeds", "student %", "student / ensemble", "ensemble %", "to beat %",
                  "CPU min"], rows,
                 "The best of the study's variants at each alpha by the mean over its seeds of student / ensemble "
                 "(variants ran on different seeds, whose teachers differ; its summary table has them all); to beat: "
                 "the higher of Co-Boosting's and DENSE's published figures (ResNet-18 teachers trained longer).")


def classes(records: list[dict]) -> Table:
    """Where the student falls short of its ensemble: per class, the student's test accuracy less the
    ensemble's, beside the share of the class's training images its largest node holds (records that
    carry per-class accuracy)."""
    rows = []
    for (alpha, variant), rs in groups(records).items():
        for r in rs:
            if "student_per_class" not in r:
                continue
            top = class_shares(torch.tensor(r["label_counts"])).max(0).values.tolist()  # largest node's share
            gap = [100 * (a - b) for a, b in zip(r["student_per_class"], r["ensemble_per_class"])]
            rows.append([alpha, variant, r["seed"], *(f"{g:+.1f} ({100 * t:.0f}%)" for g, t in zip(gap, top))])
    k = max((len(r[3:]) for r in rows), default=10)
    return Table(["alpha", "variant", "seed", *(f"class {c}" for c in range(k))], rows,
                 "Student less ensemble, test accuracy points per class (in brackets: the share of the class's "
                 "training images its largest node holds). Fashion-MNIST classes 0-9: T-shirt, trouser, pullover, "
                 "dress, coat, sandal, shirt, sneaker, bag, ankle boot.")


TABLES = {"summary": summary, "best": best, "classes": classes, "curve": curve}


def headline(records: list[dict]) -> str:
    best = max(groups(records).items(), key=lambda kv: mean_student(kv[1]), default=None)
    if best is None:
        return ""
    (alpha, variant), rs = best
    acc = mean_student(rs)
    ratio = mean_ratio(rs)
    return (f"α = {alpha}, {variant}: {acc * 100:.2f}% ({ratio:.3f} of its ensemble, {len(rs)} seed"
            f"{'s' if len(rs) > 1 else ''}; to beat: {TARGET.get(alpha, '-')})")


def figures(runs: Path, seeds: list[int], folder: Path) -> list[Path]:
    """accuracy-vs-cpu.png: each variant's test accuracy against the CPU minutes spent (from the records)."""
    from bench.study import Study

    curves = {f"{variant} (alpha {alpha}, seed {r['seed']})": [(m, a) for _, m, a in r["curve"]]
              for (alpha, variant), rs in groups(Study.find("patient").records()).items()
              for r in rs if r["seed"] in seeds}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "accuracy-vs-cpu.png"
    line_plot(curves, "test accuracy against CPU minutes", x_label="CPU minutes").save(path)
    return [path]
