"""Benchmark: the ablations of one-shot-dataset-distillation.txt on Fashion-MNIST, 5 nodes.

Each row is one `fedinv run` (partition -> teachers -> synthesize -> student -> evaluate) that
differs from its group's other rows in one synthesis switch; rows of a group share their teachers
(copied from the group's first finished row, which `train-teachers` then skips). Prints one JSON
line per row: row, group, switch, value, ensemble_accuracy, fedavg_accuracy, student_accuracy,
seconds.

    python bench/findings.py --rows all --out runs/findings
    python bench/findings.py --rows head-mask-on,head-mask-off

Groups (the report's findings):
  teachers-per-step  Dirichlet 0.5: 1 (cycling) / 3 / 5 (all) teachers per synthesis step
  head-mask          label-disjoint split (2 labels per node): output-head masking on / off
  weighted-ce        mixed split (half uniform, half by class): label-weighted CE (eq. 5) on / off
The adaptive-vs-not comparison is bench/oneshot.py's student vs student_adaptive columns.
Scale (chosen to fit the 2-core CPU): 1,024 images x 100 iterations per row, student 60 epochs.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path

import click

from fedinv import __version__
from fedinv.config import DataConfig, PartitionConfig, StudentConfig, SynthesisConfig, TeacherConfig
from fedinv.pipeline import RunConfig, run_pipeline
from jsonl import emit

SYNTHESIS = SynthesisConfig(num_images=1024, iterations=100)
STUDENT = StudentConfig(epochs=60, batch_size=128)
GROUPS = {
    "teachers-per-step": (PartitionConfig(scheme="dirichlet", alpha=0.5), TeacherConfig(epochs=15),
                          "teachers_per_step", (1, 3, 5)),
    "head-mask": (PartitionConfig(scheme="label-disjoint"), TeacherConfig(epochs=5), "head_mask", (True, False)),
    "weighted-ce": (PartitionConfig(scheme="mixed"), TeacherConfig(epochs=5), "weighted_ce", (False, True)),
}


def row_name(group: str, value: object) -> str:
    if isinstance(value, bool):
        return f"{group}-{'on' if value else 'off'}"
    return f"{group}-{value}"


ROWS = {row_name(g, v): (g, v) for g, (_, _, _, values) in GROUPS.items() for v in values}


@click.command()
@click.option("--rows", default="all", show_default=True, help=f"comma-separated, or all: {', '.join(ROWS)}")
@click.option("--out", default="runs/findings", show_default=True, help="run folders go here")
@click.option("--json-out", type=click.Path(dir_okay=False), default=None, help="also append each JSON line here")
@click.option("--device", default="auto", show_default=True)
def main(rows: str, out: str, json_out: str | None, device: str) -> None:
    names = list(ROWS) if rows == "all" else rows.split(",")
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        raise click.BadParameter(f"unknown row(s) {unknown}; known: {', '.join(ROWS)}", param_hint="--rows")
    for name in names:
        group, value = ROWS[name]
        partition, teachers, field, _ = GROUPS[group]
        cfg = RunConfig(DataConfig(), partition, dataclasses.replace(teachers, device=device),
                        dataclasses.replace(SYNTHESIS, device=device, **{field: value}),
                        dataclasses.replace(STUDENT, device=device))
        run = Path(out) / name
        shared = next((p for p in sorted(Path(out).glob(f"{group}-*/teachers/report.json"))
                       if p.parent.parent != run), None)
        if shared is not None and not (run / "teachers").exists():
            shutil.copytree(shared.parent, run / "teachers")  # same split and teacher config: skipped
        t0 = time.perf_counter()
        summary = run_pipeline(cfg, run, progress=False)
        emit({"row": name, "group": group, "switch": field, "value": value,
                           "ensemble_accuracy": summary["ensemble_accuracy"],
                           "fedavg_accuracy": summary["fedavg_accuracy"],
                           "student_accuracy": summary["student_accuracy"],
                           "seconds": time.perf_counter() - t0, "stage_seconds": summary["stage_seconds"],
                           "fedinv_version": __version__}, json_out)


if __name__ == "__main__":
    main()
