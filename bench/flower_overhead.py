"""Benchmark: the Flower engine's overhead. N FedAvg rounds on Fashion-MNIST (the setting of
assets/configs/fmnist-rounds.toml) through Flower's simulation engine vs the in-process engine,
same seed; prints one JSON object with both wall times, their ratio and the final accuracies.

    python bench/flower_overhead.py --rounds 10 --out runs/flower-overhead
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import click
import torch

from fedinv import __version__
from fedinv.federated.config import FederatedRunConfig
from fedinv.federated.rounds import federate
from fedinv.flower.simulation import federate_flower

CONFIG = Path(__file__).parent.parent / "assets" / "configs" / "fmnist-rounds.toml"


@click.command()
@click.option("--rounds", default=10, show_default=True)
@click.option("--out", default="runs/flower-overhead", show_default=True, help="run folders (replaced)")
@click.option("--threads", default=0, show_default=True,
              help="CPU threads per process for both engines (0 = all cores)")
def main(rounds: int, out: str, threads: int) -> None:
    base = FederatedRunConfig.from_toml(CONFIG)
    cfg = base.with_algorithm("fedavg", server="none", rounds=rounds, device="cpu")
    cores = threads or torch.get_num_threads()
    torch.set_num_threads(cores)
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    local = federate(cfg, Path(out) / "inprocess", progress=False)
    t_local = time.perf_counter() - t0
    t0 = time.perf_counter()
    flower = federate_flower(cfg, Path(out) / "flower", num_cpus=cores)
    t_flower = time.perf_counter() - t0
    click.echo(json.dumps({"rounds": rounds, "threads": cores, "inprocess_seconds": t_local,
                           "flower_seconds": t_flower, "overhead_ratio": t_flower / t_local,
                           "inprocess_accuracy": local["final_accuracy"], "flower_accuracy": flower["final_accuracy"],
                           "inprocess_seconds_per_round": local["seconds_per_round"],
                           "flower_seconds_per_round": flower["seconds_per_round"], "fedinv_version": __version__}))


if __name__ == "__main__":
    main()
