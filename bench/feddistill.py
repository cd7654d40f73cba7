"""Benchmark: FedDistill vs FedAvg in the form of feddistill.txt's Table I, on Fashion-MNIST
(assets/configs/feddistill-fmnist.toml: 5 nodes x 2 classes, CNN1, batch 128, lr 0.01).

--rows takes the table's (N rounds, E local epochs) pairs, by default the paper's four. For each E,
FedAvg and FedDistill run once for the largest N asked with that E, and the central (global)
model's accuracy at every N is read from the same run, with FedDistill's local (personal) models'
mean accuracy on their own node's classes (the paper's Local Node Acc) and on all classes. Prints
one JSON line per (algorithm, N, E) and a Markdown table.

    python bench/feddistill.py --out runs/feddistill
    python bench/feddistill.py --rows 10x1,20x1 --out runs/feddistill
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import click

from fedinv import __version__
from fedinv.data.datasets import load_dataset
from fedinv.federated.config import FederatedRunConfig
from fedinv.federated.rounds import federate

CONFIG = Path(__file__).parent.parent / "assets" / "configs" / "feddistill-fmnist.toml"


def parse_rows(rows: str) -> dict[int, list[int]]:
    """"10x1,20x1,10x5" -> {1: [10, 20], 5: [10]} (E -> sorted Ns)."""
    wanted: dict[int, list[int]] = {}
    for item in rows.split(","):
        n, sep, e = item.strip().partition("x")
        if not (sep and n.isdigit() and e.isdigit() and int(n) > 0 and int(e) > 0):
            raise click.BadParameter(f"{item!r}: use NxE with positive integers, e.g. 10x1", param_hint="--rows")
        wanted.setdefault(int(e), []).append(int(n))
    return {e: sorted(set(ns)) for e, ns in sorted(wanted.items())}


@click.command()
@click.option("--rows", default="10x1,20x1,10x5,50x1", show_default=True,
              help="comma-separated NxE: read the accuracy after N rounds of E local epochs each")
@click.option("--out", default="runs/feddistill", show_default=True, help="run folders go here")
@click.option("--device", default="auto", show_default=True)
def main(rows: str, out: str, device: str) -> None:
    wanted = parse_rows(rows)
    base = FederatedRunConfig.from_toml(CONFIG)
    train, test = load_dataset(base.data, "train"), load_dataset(base.data, "test")
    table = []
    for e, ns in wanted.items():
        for algorithm in ("fedavg", "feddistill"):
            # Evaluate only where the table reads (FedDistill's personal models cost a test pass each).
            cfg = base.with_algorithm(algorithm, local_epochs=e, rounds=max(ns), device=device,
                                      eval_every=math.gcd(*ns))
            run = Path(out) / f"{algorithm}-E{e}"
            report = federate(cfg, run, resume=(run / "checkpoint.pt").exists(), progress=False, train=train,
                              test=test)
            by_round = {h["round"]: h for h in report["history"]}
            for n in ns:
                row = {"algorithm": algorithm, "N": n, "E": e, "central_accuracy": by_round[n]["test_accuracy"],
                       "local_accuracy": by_round[n].get("personal_accuracy"),
                       "local_accuracy_all_classes": by_round[n].get("personal_accuracy_all_classes"),
                       "seconds_per_round": report["seconds_per_round"], "fedinv_version": __version__}
                table.append(row)
                click.echo(json.dumps(row))
    click.echo("\n| Algorithm | N | E | Local node acc (own classes) | Local node acc (all classes) "
               "| Central node acc |\n|---|---|---|---|---|---|")
    for r in sorted(table, key=lambda r: (r["E"], r["N"], r["algorithm"])):
        local = [f"{100 * v:.2f}%" if v is not None else "-"
                 for v in (r["local_accuracy"], r["local_accuracy_all_classes"])]
        click.echo(f"| {r['algorithm']} | {r['N']} | {r['E']} | {local[0]} | {local[1]} "
                   f"| {100 * r['central_accuracy']:.2f}% |")


if __name__ == "__main__":
    main()
