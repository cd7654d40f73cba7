"""Markdown tables from bench/oneshot.py's JSON lines: per (alpha, nodes, method) the mean ± std
over seeds, beside the published numbers (PUBLISHED below). A seed measured twice counts once, by its
last line (a rerun, e.g. on another machine, replaces the earlier figure); files are read in the
order given. Lines of the first one-shot benchmark (docs/bench-oneshot-deepinversion-v1.jsonl) are
read in today's keys.

    python bench/oneshot_table.py docs/bench-oneshot.jsonl
    python bench/oneshot_table.py docs/bench-oneshot-deepinversion-v1.jsonl docs/bench-oneshot.jsonl
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict

import click

# The numbers to beat: DENSE, NeurIPS 2022, Table 1 (5 clients); Co-Boosting as re-run in the FedLPA
# paper (10 clients).
PUBLISHED = {"DENSE": {0.1: 50.29, 0.3: 83.96, 0.5: 85.94}, "Co-Boosting": {0.1: 73.15, 0.3: 83.37, 0.5: 86.21}}
KEYS = ("fedavg_accuracy", "ensemble_accuracy", "student_accuracy", "student_online_accuracy")
V1_KEYS = {"student_adaptive_accuracy": "student_online_accuracy", "adaptive_store_images": "online_store_images",
           "train_student_adaptive": "train_student_online"}


def upgraded(record: dict) -> dict:
    """A line in today's keys. The first benchmark ran deepinversion only, 5 nodes, seed 0, and its
    "adaptive" student is today's online student of deepinversion (one batch every 4 epochs)."""
    if "method" in record:
        return record
    out = {V1_KEYS.get(k, k): v for k, v in record.items()}
    out["stage_seconds"] = {V1_KEYS.get(k, k): v for k, v in record.get("stage_seconds", {}).items()}
    return {"method": "deepinversion", "num_nodes": 5, "seed": 0, **out}


def cell(values: list[float]) -> str:
    pct = [100 * v for v in values]
    if len(pct) == 1:
        return f"{pct[0]:.2f}"
    return f"{statistics.mean(pct):.2f} ± {statistics.stdev(pct):.2f}"


@click.command()
@click.argument("paths", nargs=-1, type=click.Path(exists=True, dir_okay=False))
def main(paths: tuple[str, ...]) -> None:
    """Print the tables of PATHS (bench/oneshot.py --json-out; default docs/bench-oneshot.jsonl)."""
    by_seed: dict[tuple, dict[int, dict]] = defaultdict(dict)
    for path in paths or ("docs/bench-oneshot.jsonl",):
        for line in open(path).read().splitlines():
            r = upgraded(json.loads(line))
            by_seed[(r["alpha"], r["num_nodes"], r["method"])][r["seed"]] = r
    groups = {key: [seeds[s] for s in sorted(seeds)] for key, seeds in by_seed.items()}
    print("| alpha | nodes | method | seeds | one-shot FedAvg | ensemble | student | student (online) "
          "| best / ensemble | synthesis s | student s | online student s | pipeline min |")
    print("|" + "---|" * 13)
    for (alpha, nodes, method), rows in sorted(groups.items()):
        best = max(statistics.mean(r["student_accuracy"] for r in rows),
                   statistics.mean(r["student_online_accuracy"] for r in rows))
        ens = statistics.mean(r["ensemble_accuracy"] for r in rows)
        sec = {k: statistics.mean(r["stage_seconds"].get(k, 0.0) for r in rows)
               for k in ("partition", "train_teachers", "synthesize", "train_student", "train_student_online")}
        print(f"| {alpha} | {nodes} | {method} | {len(rows)} | " + " | ".join(cell([r[k] for r in rows]) for k in KEYS)
              + f" | {best / ens:.3f} | {sec['synthesize']:.0f} | {sec['train_student']:.0f} "
              f"| {sec['train_student_online']:.0f} | {sum(sec.values()) / 60:.1f} |")
    print()
    print("| published (Fashion-MNIST) | " + " | ".join(f"alpha={a}" for a in (0.1, 0.3, 0.5)) + " |")
    print("|---|---|---|---|")
    for name, values in PUBLISHED.items():
        print(f"| {name} | " + " | ".join(f"{values[a]:.2f}" for a in (0.1, 0.3, 0.5)) + " |")


if __name__ == "__main__":
    main()
