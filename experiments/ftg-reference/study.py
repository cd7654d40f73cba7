"""Does FedFTG pay off in its reference code's own federated setting (100 nodes, 10% a round, 5 local
epochs, GroupNorm model; scaled to 2 CPU cores), and which of its parts cost or help? One record per
model x method of a variant (bench/federated.py); per round the run folders also hold the diagnosis
of the round's ensemble, aggregate and global model (first 1,000 test images)."""

from __future__ import annotations

from bench.federated import rounds_table, run_methods
from bench.tables import Table

QUESTION = "In FedFTG's own setting, does its server fine-tuning save rounds?"
run = run_methods
BASE_VARIANT = True  # the variants are compared with the plain setting, the variant 'base'


def headline(records: list[dict]) -> str:
    by = {(r["model"], r["method"], r["seed"]): r for r in records if r["variant"] == "base" and r.get("method")}
    a, b = by.get(("gncnn", "fedavg", 0)), by.get(("gncnn", "fedavg+ftg", 0))
    if not (a and b):
        return ""
    return (f"gncnn, seed 0, 60 rounds: last-5 accuracy FedAvg {100 * a['last5_accuracy']:.2f}%, "
            f"FedAvg + FTG {100 * b['last5_accuracy']:.2f}%: the gain is not reproduced")


def base_table(records: list[dict]) -> Table:
    """The plain setting only (variant base), seed 0."""
    return rounds_table([r for r in records if r["variant"] == "base" and r["seed"] == 0])


TABLES = {"rounds": rounds_table, "headline": base_table}
