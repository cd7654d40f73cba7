"""Benchmark: multi-round methods with and without FedFTG on Fashion-MNIST, 10 nodes, Dirichlet 0.3,
half the nodes per round (assets/configs/fmnist-rounds.toml).

Runs each method in its own resumable run folder and prints one JSON object keyed by method name
(`fedavg`, `fedavg+ftg`, ...), each with rounds_to_80, rounds_to_85, final_accuracy (after
--rounds), mean_last_5_accuracy, best_accuracy, seconds_per_round, server_seconds_per_round and
server_share (the server step's share of a round's wall time); then writes the comparison table
and the accuracy-vs-round PNG with `fedinv federate-report`'s code. Finished runs are read back,
not re-run; a larger --rounds extends them.

    python bench/rounds.py --rounds 30 --out runs/rounds
    python bench/rounds.py --methods fedavg,fedavg+ftg --rounds 10
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import click

from fedinv import __version__
from fedinv.data.datasets import load_dataset
from fedinv.federated.report import compare
from fedinv.federated.config import FederatedRunConfig
from fedinv.federated.registry import ALGORITHMS, SERVER_STEPS
from fedinv.federated.rounds import federate

CONFIG = Path(__file__).parent.parent / "assets" / "configs" / "fmnist-rounds.toml"
DEFAULT = ",".join(f"{a}{s}" for a in ("fedavg", "fedprox", "feddyn", "scaffold") for s in ("", "+ftg"))


def parse(method: str) -> tuple[str, str]:
    algorithm, _, server = method.partition("+")
    if algorithm not in ALGORITHMS or (server and server not in SERVER_STEPS):
        raise click.BadParameter(f"{method!r}: use ALGORITHM[+SERVER] with ALGORITHM one of {', '.join(ALGORITHMS)} "
                                 f"and SERVER one of {', '.join(SERVER_STEPS)}", param_hint="--methods")
    return algorithm, server or "none"


@click.command()
@click.option("--methods", default=DEFAULT, show_default=True, help="comma-separated ALGORITHM[+SERVER]")
@click.option("--rounds", default=30, show_default=True, help="round budget of every method")
@click.option("--config", default=str(CONFIG), show_default=True, help="the base TOML")
@click.option("--out", default="runs/rounds", show_default=True, help="run folders go here")
@click.option("--device", default="auto", show_default=True)
def main(methods: str, rounds: int, config: str, out: str, device: str) -> None:
    base = FederatedRunConfig.from_toml(config)
    train, test = load_dataset(base.data, "train"), load_dataset(base.data, "test")
    reports, result = [], {}
    for method in methods.split(","):
        algorithm, server = parse(method)
        cfg = base if algorithm == base.federate.algorithm else base.with_algorithm(algorithm)
        cfg = dataclasses.replace(cfg, federate=dataclasses.replace(cfg.federate, server=server, rounds=rounds,
                                                                    device=device))
        run = Path(out) / method.replace("+", "-")
        report = federate(cfg, run, resume=(run / "checkpoint.pt").exists(), progress=False, train=train, test=test)
        reports.append(report)
        server_s = report["server_seconds_per_round"]
        result[method] = {k: report[k] for k in ("rounds_to_80", "rounds_to_85", "final_accuracy",
                                                 "mean_last_5_accuracy", "best_accuracy", "seconds_per_round",
                                                 "server_seconds_per_round")}
        result[method]["server_share"] = server_s / report["seconds_per_round"] if server_s else None
    result["setting"] = {"config": str(config), "rounds": rounds, "fedinv_version": __version__,
                         "partition": dataclasses.asdict(base.partition)}
    click.echo(json.dumps(result, indent=2))
    rows, table, plot = compare(reports, (0.8, 0.85))
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "table.md").write_text(table)
    plot.save(Path(out) / "accuracy.png")


if __name__ == "__main__":
    main()
