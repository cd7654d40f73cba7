"""How good are the teachers, one by one and as an ensemble, and what does one-shot FedAvg of them give?"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from bench.setting import run_config, teachers
from bench.tables import Table, mean, mean_std, pct

QUESTION = "How good are the teachers alone, as an ensemble, and averaged (one-shot FedAvg)?"
SEEDS = (0, 1, 2)
BASE_VARIANT = True  # base: the benchmark's teachers; the others change their epochs or width


def run(cfg: dict[str, Any], seed: int, out: Path, device: str) -> Iterator[dict[str, Any]]:
    _, report, seconds = teachers(run_config(cfg, seed, device), out)
    yield {"ensemble_accuracy": report["ensemble_accuracy"], "ensemble_mean_accuracy": report["ensemble_mean_accuracy"],
           "fedavg_accuracy": report["fedavg_accuracy"], "node_accuracy": report["node_accuracy"],
           "node_sizes": [sum(c) for c in report["label_counts"]], "wall_seconds": seconds}


def by_seed(records: list[dict]) -> Table:
    records = [r for r in records if r["variant"] == "base"]
    rows = [[r["seed"], pct(r["ensemble_accuracy"]), pct(r["ensemble_mean_accuracy"]), pct(r["fedavg_accuracy"]),
             " / ".join(f"{100 * a:.1f}" for a in r["node_accuracy"]), f"{r['wall_seconds']:.0f} s"] for r in records]
    if len(records) > 1:
        rows.append(["mean ± std", *(mean_std(r[k] for r in records) for k in
                                     ("ensemble_accuracy", "ensemble_mean_accuracy", "fedavg_accuracy")),
                     "", f"{mean(r['wall_seconds'] for r in records):.0f} s"])
    return Table(["seed", "ensemble (class-level)", "ensemble (plain mean)", "one-shot FedAvg", "per-node accuracy",
                  "train-teachers wall time"], rows)


def by_variant(records: list[dict]) -> Table:
    """The ensemble and one-shot FedAvg against the teachers' local epochs and width."""
    rows = []
    for variant in sorted({r["variant"] for r in records}, key=lambda v: (v != "base", v)):
        rs = [r for r in records if r["variant"] == variant]
        rows.append([variant, len(rs), mean_std(r["ensemble_accuracy"] for r in rs),
                     mean_std(r["fedavg_accuracy"] for r in rs), f"{mean(r['wall_seconds'] for r in rs):.0f} s"])
    return Table(["teachers", "seeds", "ensemble (class-level) %", "one-shot FedAvg %", "train-teachers wall time"],
                 rows, "base: bncnn, 15 local epochs; epochs-30 / epochs-60: longer local training; cnn2: wider.")


TABLES = {"by-seed": by_seed, "by-variant": by_variant}


def headline(records: list[dict]) -> str:
    records = [r for r in records if r["variant"] == "base"]
    if not records:
        return ""
    return (f"class-level ensemble {mean_std(r['ensemble_accuracy'] for r in records)}%, one-shot FedAvg "
            f"{mean_std(r['fedavg_accuracy'] for r in records)}% ({len(records)} seeds)")
