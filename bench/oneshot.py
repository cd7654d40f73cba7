"""Benchmark: the one-shot pipeline on Fashion-MNIST, 5 nodes, Dirichlet alpha 0.1 / 0.3 / 0.5.

For each alpha, runs assets/configs/fmnist-dirichlet-<alpha>.toml with `fedinv run` (partition,
teachers, synthesis, student), then trains an adaptive student on a copy of the same store, and
prints one JSON object per alpha (one line each):
  alpha, fedavg_accuracy, ensemble_accuracy, student_accuracy, student_adaptive_accuracy,
  stage_seconds (wall time of every stage, the adaptive student included)

    python bench/oneshot.py --alphas 0.1,0.3,0.5 --out runs/oneshot
Runs are resumable: rerunning skips finished stages (their stage_seconds then read ~0).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

import click

from fedinv import __version__
from fedinv.data.datasets import load_dataset
from fedinv.pipeline import RunConfig, run_pipeline
from fedinv.student.train import train_student

CONFIGS = Path(__file__).parent.parent / "assets" / "configs"


@click.command()
@click.option("--alphas", default="0.1,0.3,0.5", show_default=True)
@click.option("--out", default="runs/oneshot", show_default=True, help="run folders go here")
@click.option("--adaptive-batches", default=1, show_default=True, help="adaptive student: new batches per round")
@click.option("--adaptive-every", default=4, show_default=True, help="adaptive student: epochs between rounds")
@click.option("--json-out", type=click.Path(dir_okay=False), default=None, help="also append each JSON line here")
@click.option("--device", default="auto", show_default=True)
def main(alphas, out, adaptive_batches, adaptive_every, json_out, device):
    for alpha in alphas.split(","):
        cfg = RunConfig.from_toml(CONFIGS / f"fmnist-dirichlet-{alpha}.toml")
        cfg = dataclasses.replace(cfg, **{name: dataclasses.replace(getattr(cfg, name), device=device)
                                          for name in ("teachers", "synthesis", "student")})
        run = Path(out) / f"alpha-{alpha}"
        summary = run_pipeline(cfg, run, progress=False)
        adaptive_dir = run / "student-adaptive"
        store = run / "synthetic-adaptive.h5"
        if not (adaptive_dir / "report.json").is_file():
            if not store.exists():
                shutil.copy(run / "synthetic.h5", store)  # adaptive batches are appended to the copy
            t0 = time.perf_counter()
            adaptive_cfg = dataclasses.replace(cfg.student, adaptive_batches=adaptive_batches,
                                               adaptive_every=adaptive_every)
            train_student(store, adaptive_dir, adaptive_cfg, teachers_dir=run / "teachers",
                          test=load_dataset(cfg.data, "test"), progress=False)
            summary["stage_seconds"]["train_student_adaptive"] = time.perf_counter() - t0
        adaptive = json.loads((adaptive_dir / "report.json").read_text())
        line = json.dumps({"alpha": float(alpha), "fedavg_accuracy": summary["fedavg_accuracy"],
                          "ensemble_accuracy": summary["ensemble_accuracy"],
                          "student_accuracy": summary["student_accuracy"],
                          "student_adaptive_accuracy": adaptive["test_accuracy"],
                          "synthetic_images": summary["synthetic_images"],
                          "adaptive_store_images": adaptive["store_images"],
                          "stage_seconds": summary["stage_seconds"], "fedinv_version": __version__})
        print(line, flush=True)
        if json_out:
            with open(json_out, "a") as f:
                f.write(line + "\n")


if __name__ == "__main__":
    main()
