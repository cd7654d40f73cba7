"""What does the one-shot student reach per synthesis method and Dirichlet alpha, against its own
teachers' ensemble and the published one-shot figures?

Per seed: one partition and one set of teachers (shared by every method of the variant); per method
a store, a plain student and an online student (a copy of the store that gets new batches against
the current student). One record per method: fedavg / ensemble / student / student_online accuracy,
the images, stage_seconds (the shared partition + teachers, and the method's own stages) and the
configs that ran. Everything resumes: finished stages are read back, a killed one continues.
"""

from __future__ import annotations

import dataclasses
import json
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterator

from bench.records import latest
from bench.setting import read_seconds, run_config, splits, study_fields, teachers, timed
from bench.study import merged
from bench.tables import Table, mean, mean_std
from fedinv.config import to_dict
from fedinv.oneshot.student.report import finished_student
from fedinv.oneshot.student.train import train_student
from fedinv.oneshot.synthesis.store import copy_synthesis_store
from fedinv.oneshot.synthesis.synthesize import synthesize
from fedinv.runtime import save_json

QUESTION = "What does the one-shot student reach per method and Dirichlet alpha, against its ensemble?"
SEEDS = (0, 1, 2)
# The numbers to beat, Fashion-MNIST, 5 clients: DENSE (NeurIPS 2022) Table 1; Co-Boosting (ICLR 2024)
# as re-run in the FedLPA paper (docs/references.md).
PUBLISHED = {"DENSE": {0.1: 50.29, 0.3: 83.96, 0.5: 85.94}, "Co-Boosting": {0.1: 73.15, 0.3: 83.37, 0.5: 86.21}}
STAGES = ("partition", "train_teachers", "synthesize", "train_student", "train_student_online")


def run(cfg: dict[str, Any], seed: int, out: Path, device: str) -> Iterator[dict[str, Any]]:
    study = study_fields(cfg)
    base = run_config(cfg, seed, device)
    shared = read_seconds(out / "stage_seconds.json")
    teachers_dir, t_report, spent = teachers(base, out)  # shared with the study's other variants
    if spent:  # trained (or continued) now
        shared["train_teachers"] = shared.get("train_teachers", 0.0) + spent
    save_json(shared, out / "stage_seconds.json")
    _, test = splits(base.data)
    for method in study["methods"]:
        own = study.get(method, {})
        tables = merged({k: v for k, v in cfg.items() if k != "study"},
                        {"synthesis": own.get("synthesis", {}), "student": own.get("student", {})})
        rc = run_config(tables, seed, device)
        online = dataclasses.replace(rc.student, **own.get("online", {}))
        mdir = out / method
        mine = read_seconds(mdir / "stage_seconds.json")
        store, online_store = mdir / "synthetic.h5", mdir / "synthetic-online.h5"
        timed(mine, "synthesize", (mdir / "synthesis.json").is_file(), lambda: save_json(
            synthesize(teachers_dir, store, rc.synthesis, resume=True, progress=False), mdir / "synthesis.json"))
        save_json(mine, mdir / "stage_seconds.json")
        timed(mine, "train_student", finished_student(mdir / "student", rc.student) is not None,
              lambda: train_student(store, mdir / "student", rc.student, teachers_dir=teachers_dir, test=test,
                                    progress=False))
        save_json(mine, mdir / "stage_seconds.json")
        if not online_store.exists():  # new batches go to a copy (with the generator's state)
            copy_synthesis_store(store, online_store)
        timed(mine, "train_student_online", finished_student(mdir / "student-online", online) is not None,
              lambda: train_student(online_store, mdir / "student-online", online, teachers_dir=teachers_dir,
                                    test=test, progress=False))
        save_json(mine, mdir / "stage_seconds.json")
        plain = json.loads((mdir / "student" / "report.json").read_text())
        onl = json.loads((mdir / "student-online" / "report.json").read_text())
        yield {"method": method, "alpha": base.partition.alpha, "num_nodes": base.partition.num_nodes,
               "fedavg_accuracy": t_report["fedavg_accuracy"], "ensemble_accuracy": t_report["ensemble_accuracy"],
               "student_accuracy": plain["test_accuracy"], "student_online_accuracy": onl["test_accuracy"],
               "synthetic_images": plain["store_images"], "online_store_images": onl["store_images"],
               "stage_seconds": {**shared, **mine},
               "configs": {"synthesis": to_dict(rc.synthesis), "student": to_dict(rc.student),
                           "online": own.get("online", {})}}


# The first benchmark's lines (deepinversion only, before methods, nodes and seeds were recorded) in
# today's keys: its "adaptive" student is today's online student of deepinversion.
V1_KEYS = {"student_adaptive_accuracy": "student_online_accuracy", "adaptive_store_images": "online_store_images",
           "train_student_adaptive": "train_student_online"}


def upgraded(r: dict) -> dict:
    if r.get("method"):
        return r
    out = {V1_KEYS.get(k, k): v for k, v in r.items()}
    out["stage_seconds"] = {V1_KEYS.get(k, k): v for k, v in r.get("stage_seconds", {}).items()}
    return {**out, "method": "deepinversion", "num_nodes": 5}


def groups(records: list[dict]) -> dict[tuple, list[dict]]:
    """(alpha, nodes, variant, method) -> its records, one per seed (the last line of a seed counts)."""
    out: dict[tuple, list[dict]] = defaultdict(list)
    for r in sorted(latest(map(upgraded, records), "method"), key=lambda r: r["seed"]):
        out[(r["alpha"], r["num_nodes"], r["variant"], r["method"])].append(r)
    return dict(sorted(out.items()))


def by_alpha(records: list[dict]) -> Table:
    rows = []
    for (alpha, nodes, variant, method), rs in groups(records).items():
        best = max(mean(r["student_accuracy"] for r in rs), mean(r["student_online_accuracy"] for r in rs))
        sec = {k: mean(r["stage_seconds"].get(k, 0.0) for r in rs) for k in STAGES}
        plain = variant in (f"alpha-{alpha}", f"nodes-{nodes}-alpha-{alpha}")
        rows.append([alpha, nodes, method if plain else f"{method} ({variant})", len(rs),
                     *(mean_std(r[k] for r in rs) for k in ("fedavg_accuracy", "ensemble_accuracy",
                                                             "student_accuracy", "student_online_accuracy")),
                     f"{best / mean(r['ensemble_accuracy'] for r in rs):.3f}", f"{sec['synthesize']:.0f}",
                     f"{sec['train_student']:.0f}", f"{sec['train_student_online']:.0f}",
                     f"{sum(sec.values()) / 60:.1f}"])
    return Table(["alpha", "nodes", "method", "seeds", "one-shot FedAvg", "ensemble", "student", "student (online)",
                  "best / ensemble", "synthesis s", "student s", "online student s", "pipeline min"], rows,
                 "Mean ± std over seeds; stage seconds are wall times of machines often shared with other jobs "
                 "(see the README), so they compare only within a line.")


def headline_table(records: list[dict]) -> Table:
    """Per alpha (5 nodes), each method's best student (plain or online) beside the published figures."""
    best: dict[tuple[float, str], str] = {}
    ensemble: dict[float, str] = {}
    for (alpha, nodes, variant, method), rs in groups(records).items():
        if nodes != 5 or variant != f"alpha-{alpha}":
            continue
        key = max(("student_accuracy", "student_online_accuracy"), key=lambda k: mean(r[k] for r in rs))
        best[(alpha, method)] = (f"{mean_std(r[key] for r in rs)} ({len(rs)} seed{'s' * (len(rs) > 1)}"
                                 f"{', online' if key.endswith('online_accuracy') else ''})")
        ensemble[alpha] = mean_std(r["ensemble_accuracy"] for r in rs)
    alphas = sorted(ensemble)
    methods = sorted({m for _, m in best})
    rows = [[f"fedinv {m}", *(best.get((a, m), "-") for a in alphas)] for m in methods]
    rows.append(["fedinv teachers' ensemble", *(ensemble[a] for a in alphas)])
    rows += [[f"{name} (published)", *(f"{v[a]:.2f}" if a in v else "-" for a in alphas)]
             for name, v in PUBLISHED.items()]
    return Table(["Fashion-MNIST, 5 nodes", *(f"α = {a}" for a in alphas)], rows,
                 "Test accuracy (%), mean ± std over seeds; fedinv rows: the better of the plain and the online "
                 "student. Published: ResNet-18 teachers trained longer, students 8-30x our student compute.")


TABLES = {"by-alpha": by_alpha, "headline": headline_table}


def headline(records: list[dict]) -> str:
    rows = [rs for (a, n, v, m), rs in groups(records).items() if (a, n, v, m) == (0.5, 5, "alpha-0.5", "fast")]
    if not rows:
        return ""
    rs = rows[0]
    return (f"α = 0.5: fast student {mean_std(r['student_online_accuracy'] for r in rs)}% online, "
            f"{mean(r['student_online_accuracy'] for r in rs) / mean(r['ensemble_accuracy'] for r in rs):.3f} "
            f"of its ensemble ({len(rs)} seeds)")
