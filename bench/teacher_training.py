"""Benchmark: train-teachers on Fashion-MNIST (5 nodes, Dirichlet alpha 0.5, CPU default model).

Prints one JSON object: ensemble_accuracy, fedavg_accuracy, node_accuracy (list) and
wall_seconds of the train-teachers stage for the first seed, plus mean and spread over all
--seeds (each seed draws its own partition and initialization).

    python bench/teachers.py --seeds 0,1,2
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import click
from bench.machine import describe

from fedinv import __version__
from fedinv.config import DataConfig, PartitionConfig, to_dict
from fedinv.data.datasets import load_dataset
from fedinv.data.partition import make_partition
from fedinv.oneshot.teachers import TeacherConfig, train_teachers


@click.command()
@click.option("--dataset", default="fashion-mnist", show_default=True)
@click.option("--alpha", default=0.5, show_default=True, help="Dirichlet concentration")
@click.option("--num-nodes", default=5, show_default=True)
@click.option("--seeds", default="0", show_default=True, help="comma-separated seeds")
@click.option("--model", default=TeacherConfig.model, show_default=True)
@click.option("--epochs", default=TeacherConfig.epochs, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--out", default=None, help="keep the run folders here (default: a temporary folder)")
def main(dataset, alpha, num_nodes, seeds, model, epochs, device, out):
    data = DataConfig(dataset=dataset)
    labels = load_dataset(data, "train").labels.numpy()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(out or tmp)
        for seed in (int(s) for s in seeds.split(",")):
            part = make_partition(labels, 10, PartitionConfig(num_nodes=num_nodes, alpha=alpha, seed=seed), data)
            cfg = replace(TeacherConfig(), model=model, epochs=epochs, device=device, seed=seed)
            t0 = time.perf_counter()
            report = train_teachers(part, cfg, root / f"seed{seed}" / "teachers", progress=False)
            wall = time.perf_counter() - t0
            runs.append({"seed": seed, "ensemble_accuracy": report["ensemble_accuracy"],
                         "ensemble_mean_accuracy": report["ensemble_mean_accuracy"],
                         "fedavg_accuracy": report["fedavg_accuracy"], "node_accuracy": report["node_accuracy"],
                         "node_sizes": [sum(c) for c in report["label_counts"]], "wall_seconds": wall})
            print(json.dumps(runs[-1]), file=sys.stderr)

    def spread(key):
        values = [r[key] for r in runs]
        return {"mean": statistics.mean(values), "min": min(values), "max": max(values)}

    result = dict(runs[0])
    result.update({
        "benchmark": "teachers", "dataset": dataset, "alpha": alpha, "num_nodes": num_nodes,
        "config": to_dict(cfg) | {"seed": None}, "fedinv_version": __version__, "runs": runs,
        "over_seeds": {k: spread(k) for k in ("ensemble_accuracy", "ensemble_mean_accuracy",
                                              "fedavg_accuracy", "wall_seconds")},
        "machine": describe(device),
    })
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
