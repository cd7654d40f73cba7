"""Benchmark: the fast method's refinement steps, BN momentum and generator width, on the same teachers.

For each steps value (with Fast-Datafree's learning rates for it: 2 -> 5e-3, 5 -> 3e-3,
10 -> 2e-3, 20 -> 1e-3) and each BN momentum, a store of --images images, then a student trained
on it (KD from the teachers, --student-epochs epochs). Prints one JSON line per setting:
  steps, lr_g, bn_momentum, generator_width, images_per_s, audit_agreement (reference classifier, as `fedinv
  audit`), student_accuracy, ensemble_accuracy, seconds

    python bench/fast_sweep.py --teachers runs/oneshot/alpha-0.5-nodes-5-seed-0/teachers \\
        --reference runs/reference/node-0.pt --json-out docs/bench-fast-sweep.jsonl
Resumable: finished settings in --out are read back.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import click
from bench.records import emit

from fedinv import __version__
from fedinv.config import DataConfig, to_dict
from fedinv.data.datasets import load_dataset
from fedinv.oneshot.audit import audit_store
from fedinv.oneshot.student.config import StudentConfig
from fedinv.oneshot.student.train import train_student
from fedinv.oneshot.synthesis.config import SynthesisConfig
from fedinv.oneshot.synthesis.synthesize import synthesize
from fedinv.runtime import resolve_device, save_json

LR_G = {2: 5e-3, 5: 3e-3, 10: 2e-3, 20: 1e-3}  # Fast-Datafree's scripts (20: halved again)


@click.command()
@click.option("--teachers", "teachers_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="teachers folder (node-K.pt and report.json from fedinv train-teachers)")
@click.option("--reference", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="reference classifier for the audit (e.g. a bncnn trained on all the data)")
@click.option("--steps", default="2,5,10,20", show_default=True, help="refinement steps per batch to sweep")
@click.option("--momentum", default="0.9,0", show_default=True, help="BN momentum values")
@click.option("--widths", default="128", show_default=True, help="generator widths (channels of its first map)")
@click.option("--images", default=4096, show_default=True, help="images per store")
@click.option("--student-epochs", default=10, show_default=True, help="epochs of the student on each store")
@click.option("--seed", default=0, show_default=True, help="seed of synthesis and student")
@click.option("--out", default="runs/fast-sweep", show_default=True, type=click.Path(path_type=Path),
              help="a run folder per setting goes here")
@click.option("--json-out", type=click.Path(dir_okay=False), default=None, help="append each JSON line here")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps")
def main(teachers_dir, reference, steps, momentum, widths, images, student_epochs, seed, out, json_out, device):
    test = load_dataset(DataConfig(dataset="fashion-mnist"), "test")
    ensemble = json.loads((teachers_dir / "report.json").read_text())["ensemble_accuracy"]
    settings = [(m, s, w) for w in map(int, widths.split(",")) for m in map(float, momentum.split(","))
                for s in map(int, steps.split(","))]
    for m, s, w in settings:
        run = out / (f"steps-{s}-momentum-{m}-seed-{seed}" + (f"-width-{w}" if w != 128 else ""))
        done = run / "result.json"
        if not done.is_file():
            cfg = SynthesisConfig.of(method="fast", num_images=images, steps=s, lr_g=LR_G.get(s, 3e-3),
                                     bn_momentum=m, generator_width=w, seed=seed, device=device)
            t0 = time.perf_counter()
            stats = synthesize(teachers_dir, run / "synthetic.h5", cfg, resume=True, progress=False)
            seconds = time.perf_counter() - t0
            student = StudentConfig(epochs=student_epochs, batch_size=128, seed=seed, device=device)
            report = train_student(run / "synthetic.h5", run / "student", student, teachers_dir=teachers_dir,
                                   test=test, progress=False)
            audit = audit_store(run / "synthetic.h5", reference, resolve_device(device))
            save_json({"steps": s, "lr_g": cfg.params.lr_g, "bn_momentum": m, "generator_width": w, "seed": seed,
                       "images_per_s": stats["images"] / max(stats["seconds"], 1e-9),
                       "audit_agreement": audit["reference_agreement"],
                       "student_accuracy": report["test_accuracy"], "ensemble_accuracy": ensemble,
                       "synthesis_seconds": seconds, "config": to_dict(cfg), "student_config": to_dict(student),
                       "fedinv_version": __version__}, done)
        emit(json.loads(done.read_text()), json_out)


if __name__ == "__main__":
    main()
