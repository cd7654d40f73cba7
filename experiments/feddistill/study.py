"""FedDistill against FedAvg in the form of feddistill.txt's Table I on Fashion-MNIST (5 nodes x 2
classes, CNN1, batch 128, lr 0.01). For each E, FedAvg and FedDistill run once for the largest N of
the variant's rows, and the central (global) model's accuracy at every N is read from that run, with
FedDistill's local (personal) models' mean accuracy on their own node's classes (the paper's Local
Node Acc) and on all classes. One record per (algorithm, N, E)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterator

from bench.setting import splits
from bench.tables import Table
from fedinv.errors import ConfigError
from fedinv.federated.config import FederatedRunConfig
from fedinv.federated.rounds import federate

QUESTION = "Does FedDistill beat FedAvg as in its paper's Table I?"


def parse_rows(rows: list[str]) -> dict[int, list[int]]:
    """["10x1", "20x1", "10x5"] -> {1: [10, 20], 5: [10]} (E -> sorted Ns)."""
    wanted: dict[int, list[int]] = {}
    for item in rows:
        n, sep, e = item.strip().partition("x")
        if not (sep and n.isdigit() and e.isdigit() and int(n) > 0 and int(e) > 0):
            raise ConfigError(f"study.rows: {item!r}: use NxE with positive integers, e.g. 10x1")
        wanted.setdefault(int(e), []).append(int(n))
    return {e: sorted(set(ns)) for e, ns in sorted(wanted.items())}


def run(cfg: dict[str, Any], seed: int, out: Path, device: str) -> Iterator[dict[str, Any]]:
    wanted = parse_rows(cfg["study"]["rows"])
    base = FederatedRunConfig.from_dict({k: v for k, v in cfg.items() if k != "study"}, defaults=FederatedRunConfig())
    train, test = splits(base.data)
    for e, ns in wanted.items():
        for algorithm in ("fedavg", "feddistill"):
            # evaluated only where the table reads (FedDistill's personal models cost a test pass each)
            c = base.with_algorithm(algorithm, local_epochs=e, rounds=max(ns), device=device, eval_every=math.gcd(*ns),
                                    seed=seed)
            folder = out / f"{algorithm}-E{e}"
            report = federate(c, folder, resume=(folder / "checkpoint.pt").exists(), progress=False, train=train,
                              test=test)
            by_round = {h["round"]: h for h in report["history"]}
            for n in ns:
                yield {"algorithm": algorithm, "N": n, "E": e, "central_accuracy": by_round[n]["test_accuracy"],
                       "local_accuracy": by_round[n].get("personal_accuracy"),
                       "local_accuracy_all_classes": by_round[n].get("personal_accuracy_all_classes"),
                       "seconds_per_round": report["seconds_per_round"]}


def table_one(records: list[dict]) -> Table:
    def cell(v):
        return f"{100 * v:.2f}%" if v is not None else "-"
    rows = [[r["algorithm"], r["N"], r["E"], cell(r["local_accuracy"]), cell(r["local_accuracy_all_classes"]),
             cell(r["central_accuracy"])] for r in sorted(records, key=lambda r: (r["E"], r["N"], r["algorithm"]))]
    return Table(["algorithm", "N", "E", "local node acc (own classes)", "local node acc (all classes)",
                  "central node acc"], rows)


TABLES = {"table-1": table_one}


def headline(records: list[dict]) -> str:
    by = {(r["algorithm"], r["N"], r["E"]): r for r in records}
    a, b = by.get(("fedavg", 20, 1)), by.get(("feddistill", 20, 1))
    return (f"N = 20, E = 1: central FedAvg {100 * a['central_accuracy']:.2f}%, FedDistill "
            f"{100 * b['central_accuracy']:.2f}%" if a and b else "")
