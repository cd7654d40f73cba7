"""Benchmark: FedDistill vs FedAvg in the form of feddistill.txt's Table I, on Fashion-MNIST
(assets/configs/feddistill-fmnist.toml: 5 nodes x 2 classes, CNN1, batch 128, lr 0.01).

For E local epochs in --epochs, runs FedAvg and FedDistill for max(--rounds) rounds and reads the
central (global) model's accuracy at each N in --rounds from the same run, and FedDistill's local
(personal) models' mean accuracy. Prints one JSON line per (algorithm, N, E) and a Markdown table.

    python bench/feddistill.py --rounds 10,20 --epochs 1,5 --out runs/feddistill
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import click

from fedinv import __version__
from fedinv.data.datasets import load_dataset
from fedinv.federated.rounds import FederatedRunConfig, federate

CONFIG = Path(__file__).parent.parent / "assets" / "configs" / "feddistill-fmnist.toml"


@click.command()
@click.option("--rounds", default="10,20", show_default=True, help="N: rounds at which accuracy is read")
@click.option("--epochs", default="1,5", show_default=True, help="E: local epochs, one pair of runs each")
@click.option("--out", default="runs/feddistill", show_default=True, help="run folders go here")
@click.option("--device", default="auto", show_default=True)
def main(rounds: str, epochs: str, out: str, device: str) -> None:
    base = FederatedRunConfig.from_toml(CONFIG)
    train, test = load_dataset(base.data, "train"), load_dataset(base.data, "test")
    ns, table = sorted(int(n) for n in rounds.split(",")), []
    for e in (int(x) for x in epochs.split(",")):
        for algorithm in ("fedavg", "feddistill"):
            fc = dataclasses.replace(base.federate, algorithm=algorithm, local_epochs=e, rounds=max(ns),
                                     device=device, eval_every=1)
            run = Path(out) / f"{algorithm}-E{e}"
            report = federate(dataclasses.replace(base, federate=fc), run, resume=(run / "checkpoint.pt").exists(),
                              progress=False, train=train, test=test)
            by_round = {h["round"]: h for h in report["history"]}
            for n in ns:
                row = {"algorithm": algorithm, "N": n, "E": e, "central_accuracy": by_round[n]["test_accuracy"],
                       "local_accuracy": by_round[n].get("personal_accuracy"),
                       "seconds_per_round": report["seconds_per_round"], "fedinv_version": __version__}
                table.append(row)
                click.echo(json.dumps(row))
    click.echo("\n| Algorithm | N | E | Local node acc | Central node acc |\n|---|---|---|---|---|")
    for r in sorted(table, key=lambda r: (r["E"], r["N"], r["algorithm"])):
        local = f"{100 * r['local_accuracy']:.2f}%" if r["local_accuracy"] is not None else "-"
        click.echo(f"| {r['algorithm']} | {r['N']} | {r['E']} | {local} | {100 * r['central_accuracy']:.2f}% |")


if __name__ == "__main__":
    main()
