"""Benchmark: the one-shot pipeline on Fashion-MNIST per synthesis method, on the same teachers.

For each (alpha, nodes, seed): one partition and one set of teachers (assets/configs/
fmnist-dirichlet-<alpha>.toml, nodes and every seed replaced), then for each method a store, a
student trained on it (plain), and a student trained online (a copy of the store, new batches
against the current student every epoch). Appends one JSON line per (setting, method) to --json-out:
  method, alpha, num_nodes, seed, fedavg_accuracy, ensemble_accuracy, student_accuracy,
  student_online_accuracy, synthetic_images, online_store_images, stage_seconds, machine
(stage_seconds: wall time of partition + teachers, which the methods share, and of the method's
own stages; machine: the CPU and threads that ran them).

    python bench/oneshot.py --alphas 0.5 --methods deepinversion,fast,dense --seeds 0,1,2
    python bench/oneshot.py --alphas 0.05 --num-nodes 10 --methods fast
    python bench/oneshot.py --alphas 0.5 --methods fast --set synthesis.fast.steps=10 --tag steps10
Method settings: the config's [synthesis] and [student] tables, then METHODS below, then --set
(a variant: its lines say METHOD@TAG, its folders METHOD-TAG). Runs resume: rerunning skips
finished stages (their seconds are read from the earlier run's records).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import click
from bench.records import emit
from bench.machine import describe

from fedinv import __version__
from fedinv.config import apply_overrides, from_dict, to_dict
from fedinv.data.datasets import load_dataset
from fedinv.errors import ConfigError, RunStateError
from fedinv.oneshot.pipeline import RunConfig, partition_stage
from fedinv.oneshot.student.config import StudentConfig
from fedinv.oneshot.student.report import finished_student
from fedinv.oneshot.student.train import train_student
from fedinv.oneshot.synthesis.config import SynthesisConfig
from fedinv.oneshot.synthesis.store import copy_synthesis_store
from fedinv.oneshot.synthesis.synthesize import synthesize
from fedinv.oneshot.teachers import train_teachers
from fedinv.runtime import save_json
from fedinv.store import read_meta

CONFIGS = Path(__file__).parent.parent / "assets" / "configs"

# Per method: (synthesis fields, student fields, online-student fields) over the config's tables.
# deepinversion: 8,192 images at 100 iterations and 40 student epochs (the report's setting). fast
# spends less synthesis time on 4x the images, with the same number of student image passes (10
# epochs); dense (30 steps a batch) makes the 8,192 images of deepinversion. Online: new batches
# against the current student, the whole pool replayed every epoch.
METHODS: dict[str, tuple[dict[str, Any], dict[str, Any], dict[str, Any]]] = {
    "deepinversion": ({}, {}, {"adaptive_batches": 1, "adaptive_every": 4}),
    "fast": ({"method": "fast", "num_images": 32768}, {"epochs": 10}, {"adaptive_batches": 8, "adaptive_every": 1}),
    "dense": ({"method": "dense"}, {}, {"adaptive_batches": 1, "adaptive_every": 2}),
}


def read_seconds(path: Path) -> dict[str, float]:
    return json.loads(path.read_text()) if path.is_file() else {}


def store_config(store: Path) -> dict[str, Any]:
    """The synthesis config that made `store` (a store from before a field was added gets what it
    stood for), not today's defaults."""
    return to_dict(from_dict(SynthesisConfig, read_meta(store)["config"]))


def timed(seconds: dict[str, float], stage: str, done: bool, fn: Callable[[], Any]) -> None:
    """Run fn unless `done`; records its wall time under `stage`."""
    if done:
        return
    t0 = time.perf_counter()
    fn()
    seconds[stage] = seconds.get(stage, 0.0) + time.perf_counter() - t0


def finished(folder: Path, cfg: StudentConfig) -> bool:
    """A student of these settings finished in `folder` (one of other settings is refused: a variant
    goes in its own folders, --tag)."""
    try:
        return finished_student(folder, cfg) is not None
    except RunStateError as e:
        raise click.UsageError(f"{e} (name this variant with --tag, or another --out)") from e


def variant_fields(overrides: tuple[str, ...], tag: str) -> dict[str, dict[str, Any]]:
    """--set's synthesis and student fields (the teachers are shared by every method and variant)."""
    fields = apply_overrides({}, overrides)
    if fields and not tag:
        raise ConfigError("--set makes a variant: name it with --tag (its own folders and JSON method)")
    extra = set(fields) - {"synthesis", "student"}
    if extra:
        raise ConfigError(f"--set: table(s) {sorted(extra)} cannot vary per method; use synthesis or student")
    SynthesisConfig.from_dict(fields.get("synthesis", {}), strict=True)  # unknown fields and wrong types: now
    from_dict(StudentConfig, {**to_dict(StudentConfig()), **fields.get("student", {})})
    return fields


def run_setting(alpha: str, nodes: int, seed: int, methods: list[str], out: Path, device: str,
                variant: dict[str, dict[str, Any]] | None = None, tag: str = "") -> Iterator[dict]:
    """Yields each method's line as soon as it is measured (a killed run keeps what it printed);
    `variant`: synthesis and student fields over each method's, for the variant `tag`."""
    variant = variant or {}
    cfg = RunConfig.from_toml(CONFIGS / f"fmnist-dirichlet-{alpha}.toml")
    cfg = dataclasses.replace(
        cfg, partition=dataclasses.replace(cfg.partition, num_nodes=nodes, seed=seed),
        teachers=dataclasses.replace(cfg.teachers, seed=seed, device=device))
    run = out / f"alpha-{alpha}-nodes-{nodes}-seed-{seed}"
    run.mkdir(parents=True, exist_ok=True)
    shared = read_seconds(run / "stage_seconds.json")
    train, test = load_dataset(cfg.data, "train"), load_dataset(cfg.data, "test")
    timed(shared, "partition", (run / "partition.json").is_file(),
          lambda: partition_stage(cfg, run / "partition.json", train))
    part = partition_stage(cfg, run / "partition.json", train)
    teachers = run / "teachers"
    timed(shared, "train_teachers", (teachers / "report.json").is_file(),
          lambda: train_teachers(part, cfg.teachers, teachers, progress=False, train=train, test=test))
    save_json(shared, run / "stage_seconds.json")
    t_report = json.loads((teachers / "report.json").read_text())
    for method in methods:
        syn_fields, student_fields, online_fields = METHODS[method]
        syn = from_dict(SynthesisConfig, {**to_dict(cfg.synthesis), "seed": seed, "device": device, **syn_fields,
                                          **variant.get("synthesis", {})})
        student = from_dict(StudentConfig, {**to_dict(cfg.student), "seed": seed, "device": device,
                                            **student_fields, **variant.get("student", {})})
        online = dataclasses.replace(student, **online_fields)
        mdir = run / (f"{method}-{tag}" if tag else method)
        times_file = mdir / "stage_seconds.json"  # one file per method: methods may run side by side
        mine = read_seconds(times_file)
        store, online_store = mdir / "synthetic.h5", mdir / "synthetic-online.h5"
        timed(mine, "synthesize", (mdir / "synthesis.json").is_file(), lambda: save_json(
            synthesize(teachers, store, syn, resume=True, progress=False), mdir / "synthesis.json"))
        save_json(mine, times_file)
        timed(mine, "train_student", finished(mdir / "student", student), lambda: train_student(
            store, mdir / "student", student, teachers_dir=teachers, test=test, progress=False))
        save_json(mine, times_file)
        if not online_store.exists():  # new batches are appended to a copy (with the generator state)
            copy_synthesis_store(store, online_store)
        timed(mine, "train_student_online", finished(mdir / "student-online", online),
              lambda: train_student(online_store, mdir / "student-online", online, teachers_dir=teachers, test=test,
                                    progress=False))
        save_json(mine, times_file)
        plain = json.loads((mdir / "student" / "report.json").read_text())
        onl = json.loads((mdir / "student-online" / "report.json").read_text())
        yield {"method": f"{method}@{tag}" if tag else method, "alpha": float(alpha), "num_nodes": nodes, "seed": seed,
               "fedavg_accuracy": t_report["fedavg_accuracy"], "ensemble_accuracy": t_report["ensemble_accuracy"],
               "student_accuracy": plain["test_accuracy"], "student_online_accuracy": onl["test_accuracy"],
               "synthetic_images": plain["store_images"], "online_store_images": onl["store_images"],
               "stage_seconds": {**shared, **mine},
               "config": {"synthesis": store_config(store), "student": dataclasses.asdict(student),
                          "online": online_fields},
               "fedinv_version": __version__, "machine": describe(device)}


@click.command()
@click.option("--alphas", default="0.5", show_default=True, help="Dirichlet alphas (a config per alpha in "
              "assets/configs/fmnist-dirichlet-<alpha>.toml)")
@click.option("--num-nodes", default=5, show_default=True, help="nodes of the partition")
@click.option("--seeds", default="0", show_default=True, help="seeds of partition, teachers, synthesis, student")
@click.option("--methods", default="deepinversion,fast,dense", show_default=True, help="synthesis methods")
@click.option("--out", default="runs/oneshot", show_default=True, help="run folders go here")
@click.option("--json-out", type=click.Path(dir_okay=False), default=None, help="append each JSON line here")
@click.option("--set", "overrides", multiple=True, metavar="TABLE.FIELD=VALUE",
              help="a synthesis or student field over every method's, e.g. --set synthesis.fast.steps=10 (repeatable; "
                   "needs --tag)")
@click.option("--tag", default="", help="the variant's name: its JSON method is METHOD@TAG, its folders METHOD-TAG")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps")
def main(alphas, num_nodes, seeds, methods, out, json_out, overrides, tag, device):
    chosen = methods.split(",")
    unknown = [m for m in chosen if m not in METHODS]
    if unknown:
        raise click.BadParameter(f"{unknown}; choose from {', '.join(METHODS)}", param_hint="--methods")
    try:
        variant = variant_fields(overrides, tag)
    except ConfigError as e:
        raise click.BadParameter(str(e), param_hint="--set") from e
    for alpha in alphas.split(","):
        for seed in map(int, seeds.split(",")):
            for record in run_setting(alpha, num_nodes, seed, chosen, Path(out), device, variant, tag):
                emit(record, json_out)


if __name__ == "__main__":
    main()
