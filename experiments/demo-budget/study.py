"""With the student's compute fixed (16,384 images x 12 epochs ~ 1,024 x 200), does the demo gain more
from fast's many images or from deepinversion's few sharper ones? `fedinv run` of each demo config,
the teachers at the config's seed, synthesis and student at the run's seed."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Iterator

from bench.study import ROOT
from bench.tables import Table, mean_std
from fedinv.oneshot.pipeline import RunConfig, run_pipeline
from fedinv.oneshot.synthesis.registry import method_class
from fedinv.store import read_rows

QUESTION = "At the demo's budget, which synthesis method gives the better student?"
SEEDS = (0, 1)


def run(cfg: dict[str, Any], seed: int, out: Path, device: str) -> Iterator[dict[str, Any]]:
    rc = RunConfig.from_toml(ROOT / cfg["study"]["config"])
    student = cfg["study"].get("student", {})  # the variant's student fields over the config's
    synthesis = dict(cfg["study"].get("synthesis", {}))  # its synthesis fields, the method's own ones among them
    method = synthesis.pop("method", rc.synthesis.method)
    own = {k: v for k, v in synthesis.items() if k in {f.name for f in dataclasses.fields(method_class(method).Params)}}
    shared = {k: v for k, v in synthesis.items() if k not in own}
    rc = dataclasses.replace(rc, teachers=dataclasses.replace(rc.teachers, device=device),
                             synthesis=dataclasses.replace(rc.synthesis, seed=seed, device=device,
                                                           **shared).with_method(method, **own),
                             student=dataclasses.replace(rc.student, seed=seed, device=device, **student))
    summary = run_pipeline(rc, out, progress=False)
    _, targets, soft = read_rows(out / "synthetic.h5")
    yield {"student_accuracy": summary["student_accuracy"], "ensemble_accuracy": summary["ensemble_accuracy"],
           "target_agreement": (soft.float().argmax(1) == targets).float().mean().item(),
           "fedavg_accuracy": summary["fedavg_accuracy"], "stage_seconds": summary.get("stage_seconds"),
           "student_config": dataclasses.asdict(rc.student)}


def by_config(records: list[dict]) -> dict[str, list[dict]]:
    """Each config (variant) -> its records, configs in name order."""
    return {v: [r for r in records if r["variant"] == v] for v in sorted({r["variant"] for r in records})}


def students(records: list[dict]) -> Table:
    rows = []
    for variant, rs in by_config(records).items():
        rows.append([variant, len(rs), mean_std(r["student_accuracy"] for r in rs),
                     mean_std((r["student_accuracy"] / r["ensemble_accuracy"] for r in rs), scale=1, digits=3)])
    return Table(["config", "seeds", "student %", "student / ensemble"], rows)


TABLES = {"students": students}


def headline(records: list[dict]) -> str:
    """The config whose student is best on the mean over its seeds, against the runner-up."""
    acc = {v: [r["student_accuracy"] for r in rs] for v, rs in by_config(records).items()}
    ranked = sorted(acc, key=lambda v: -sum(acc[v]) / len(acc[v]))
    if not ranked:
        return ""
    n = len(acc[ranked[0]])
    best = f"{ranked[0]}: student {mean_std(acc[ranked[0]])}% ({n} seed{'s' if n > 1 else ''})"
    return best + (f", {ranked[1]} {mean_std(acc[ranked[1]])}%" if len(ranked) > 1 else "")
