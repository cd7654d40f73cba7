"""Benchmark: seconds per stored batch of deepinversion against fast, interleaved in one process.

Batches of each setting are timed in turn (deepinversion at --iterations, fast at its default
steps and each --widths generator width), so a machine whose load changes during the run slows
them alike; the ratios are what to compare (bench/synthesis.py gives images/s on a quiet machine).
Prints one JSON object: seconds_per_batch and images_per_s per setting (best of --repeats), and
each fast setting's speed-up over deepinversion.

    python bench/method_ratio.py --teachers runs/oneshot/alpha-0.5-nodes-5-seed-0/teachers --threads 1
"""

from __future__ import annotations

import json
import time

import click
import torch

from fedinv.oneshot.synthesis.config import SynthesisConfig
from fedinv.oneshot.synthesis.ensemble import load_ensemble
from fedinv.oneshot.synthesis.method import ensemble_path, make_synthesizer
from fedinv.oneshot.synthesis.store import make_batch


@click.command()
@click.option("--teachers", required=True, type=click.Path(file_okay=False), help="teachers folder")
@click.option("--widths", default="128,64", show_default=True, help="fast generator widths to time")
@click.option("--iterations", default=100, show_default=True, help="deepinversion's iterations per batch")
@click.option("--batch-size", default=256, show_default=True)
@click.option("--repeats", default=3, show_default=True, help="batches timed per setting (best is kept)")
@click.option("--threads", default=0, show_default=True, help="torch CPU threads (0: torch's default)")
def main(teachers: str, widths: str, iterations: int, batch_size: int, repeats: int, threads: int) -> None:
    if threads:
        torch.set_num_threads(threads)
    cpu = torch.device("cpu")
    cfgs = {"deepinversion": SynthesisConfig.of(iterations=iterations, batch_size=batch_size, device="cpu")}
    for w in map(int, widths.split(",")):
        cfgs[f"fast-width-{w}"] = SynthesisConfig.of("fast", generator_width=w, batch_size=batch_size, device="cpu")
    synths = {k: make_synthesizer(load_ensemble(teachers, cpu, ensemble_path(c)), c, None) for k, c in cfgs.items()}
    for k, s in synths.items():
        if k != "deepinversion":
            make_batch(s, 0, batch_size)  # the first batch of a generator warms up allocations
    times: dict[str, list[float]] = {k: [] for k in synths}
    for rep in range(repeats):
        for k, s in synths.items():
            t0 = time.perf_counter()
            make_batch(s, rep + 1, batch_size)
            times[k].append(time.perf_counter() - t0)
    best = {k: min(v) for k, v in times.items()}
    click.echo(json.dumps({"seconds_per_batch": best, "images_per_s": {k: batch_size / v for k, v in best.items()},
                           "speedup_over_deepinversion": {k: best["deepinversion"] / v for k, v in best.items()
                                                          if k != "deepinversion"},
                           "iterations": iterations, "batch_size": batch_size, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
