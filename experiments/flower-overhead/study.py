"""What does the Flower engine cost over the in-process engine? The same FedAvg rounds, same seed, on
both; one record: both wall times, their ratio and both final accuracies (equal: the same model)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any, Iterator

import torch

from bench.tables import Table
from fedinv.federated.config import FederatedRunConfig
from fedinv.federated.rounds import federate
from fedinv.flower.simulation import federate_flower

QUESTION = "What does running the rounds through Flower cost over the in-process engine?"


def run(cfg: dict[str, Any], seed: int, out: Path, device: str) -> Iterator[dict[str, Any]]:
    base = FederatedRunConfig.from_dict(cfg, defaults=FederatedRunConfig())
    c = base.with_algorithm("fedavg", server="none", device="cpu", seed=seed)
    cores = torch.get_num_threads()
    shutil.rmtree(out, ignore_errors=True)  # both engines timed from the start
    t0 = time.perf_counter()
    local = federate(c, out / "inprocess", progress=False)
    t_local = time.perf_counter() - t0
    t0 = time.perf_counter()
    flower = federate_flower(c, out / "flower", num_cpus=cores)
    t_flower = time.perf_counter() - t0
    yield {"rounds": c.federate.rounds, "threads": cores, "inprocess_seconds": t_local, "flower_seconds": t_flower,
           "overhead_ratio": t_flower / t_local, "inprocess_accuracy": local["final_accuracy"],
           "flower_accuracy": flower["final_accuracy"], "inprocess_seconds_per_round": local["seconds_per_round"],
           "flower_seconds_per_round": flower["seconds_per_round"]}


def engines(records: list[dict]) -> Table:
    rows = []
    for r in records:
        rows.append(["in-process (`fedinv federate`)", f"{r['inprocess_seconds']:.0f} s",
                     f"{r['inprocess_seconds_per_round']:.1f} s", f"{100 * r['inprocess_accuracy']:.2f}"])
        rows.append([f"Flower simulation ({r['overhead_ratio']:.2f}x)", f"{r['flower_seconds']:.0f} s",
                     f"{r['flower_seconds_per_round']:.1f} s", f"{100 * r['flower_accuracy']:.2f}"])
    return Table(["engine", "wall time", "per round", "test accuracy at the end"], rows,
                 "10 FedAvg rounds, 2 CPU threads each engine.")


TABLES = {"engines": engines}


def headline(records: list[dict]) -> str:
    return f"Flower: {records[-1]['overhead_ratio']:.2f}x the in-process wall time, same accuracy" if records else ""
