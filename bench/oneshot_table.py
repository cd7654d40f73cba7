"""Markdown tables from bench/oneshot.py's JSON lines: ours beside the published numbers of DESIGN.md.

    python bench/oneshot_table.py docs/bench-oneshot.jsonl
"""

from __future__ import annotations

import json
import sys

# DESIGN.md, "Numbers to beat" (DENSE, NeurIPS 2022, Table 1; ensemble as re-run in FuseFL).
PUBLISHED = {"FedAvg": (41.69, 82.96, 83.72), "FedDF": (43.58, 80.67, 84.67), "Fed-ADI": (48.49, 81.15, 84.19),
             "DENSE": (50.29, 83.96, 85.94), "ensemble": (67.71, 87.25, 89.42)}
ALPHAS = (0.1, 0.3, 0.5)


def main(path: str) -> None:
    rows = {r["alpha"]: r for r in map(json.loads, open(path).read().splitlines())}
    print("| alpha | one-shot FedAvg | ensemble | student | student (adaptive) | student - FedAvg "
          "| student / ensemble | teachers s | synthesis s | student s | adaptive student s | total min |")
    print("|" + "---|" * 12)
    for a in sorted(rows):
        r, s = rows[a], rows[a]["stage_seconds"]
        pct = {k: 100 * r[k] for k in ("fedavg_accuracy", "ensemble_accuracy", "student_accuracy",
                                       "student_adaptive_accuracy")}
        print(f"| {a} | {pct['fedavg_accuracy']:.2f} | {pct['ensemble_accuracy']:.2f} | {pct['student_accuracy']:.2f} "
              f"| {pct['student_adaptive_accuracy']:.2f} | {pct['student_accuracy'] - pct['fedavg_accuracy']:+.2f} "
              f"| {r['student_accuracy'] / r['ensemble_accuracy']:.3f} | {s['train_teachers']:.0f} "
              f"| {s['synthesize']:.0f} | {s['train_student']:.0f} | {s.get('train_student_adaptive', 0):.0f} "
              f"| {sum(s.values()) / 60:.1f} |")
    print()
    print("| method | " + " | ".join(f"alpha={a}" for a in ALPHAS) + " |")
    print("|---|" + "---|" * len(ALPHAS))
    for name, values in PUBLISHED.items():
        print(f"| {name} (published) | " + " | ".join(f"{v:.2f}" for v in values) + " |")
    ours = (("fedavg_accuracy", "one-shot FedAvg (ours)"), ("ensemble_accuracy", "ensemble (ours)"),
            ("student_accuracy", "fedinv student"), ("student_adaptive_accuracy", "fedinv student, adaptive"))
    for key, name in ours:
        print(f"| {name} | " + " | ".join(f"{100 * rows[a][key]:.2f}" if a in rows else "-" for a in ALPHAS) + " |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "docs/bench-oneshot.jsonl")
