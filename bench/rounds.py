"""Benchmark: multi-round methods with and without a server step (FedFTG, FedDF, FedGen).

Default setting: Fashion-MNIST, 10 nodes, Dirichlet 0.3, half the nodes per round
(assets/configs/fmnist-rounds.toml); the FedFTG reference setting (100 nodes, 10% per round, 5
local epochs, GroupNorm model) is assets/configs/fmnist-rounds-reference.toml.

Runs each model x method x seed in its own resumable run folder (OUT/MODEL/METHOD-seed-S) and
prints one JSON object: model -> method (`fedavg`, `fedavg+ftg`, ...) -> rounds_to_75 / 80 / 85
(null when not reached), final_accuracy (after --rounds), last5_accuracy, best_accuracy,
seconds_per_round, server_seconds_per_round, server_share (the server step's share of a round's
wall time), seeds, each a mean over the seeds (`per_seed` keeps each seed's, with the CPU that ran
it as `machine`). With --diagnose N,
every round also records on the first N test images the accuracy of the round's ensemble of
local models, of the aggregate before the server step and of the global model after it, and the
picture OUT/MODEL/diagnose.png draws them. The comparison table and accuracy-vs-round PNG go to
OUT/MODEL. Finished runs are read back, not re-run; a larger --rounds extends them; a killed run
resumes.

    python bench/rounds.py --rounds 30 --out runs/rounds --json-out docs/bench-rounds.json
    python bench/rounds.py --config assets/configs/fmnist-rounds-reference.toml --models gncnn,bncnn \
        --methods fedavg,fedavg+ftg --rounds 60 --diagnose 1000 --out runs/rounds-reference \
        --json-out docs/bench-rounds-reference.json
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import click
import numpy as np
from bench.machine import cpu_name

from fedinv import __version__
from fedinv.data.datasets import load_dataset
from fedinv.federated.config import FederatedRunConfig
from fedinv.federated.registry import ALGORITHMS, SERVER_STEPS
from fedinv.federated.report import compare
from fedinv.federated.rounds import federate, mean_last_accuracy, rounds_to_target
from fedinv.runtime import save_json
from fedinv.viz import line_plot

CONFIG = Path(__file__).parent.parent / "assets" / "configs" / "fmnist-rounds.toml"
DEFAULT = ",".join(f"{a}{s}" for a in ("fedavg", "fedprox", "feddyn", "scaffold") for s in ("", "+ftg"))


def parse(method: str) -> tuple[str, str]:
    algorithm, _, server = method.partition("+")
    if algorithm not in ALGORITHMS or (server and server not in SERVER_STEPS):
        raise click.BadParameter(f"{method!r}: use ALGORITHM[+SERVER] with ALGORITHM one of {', '.join(ALGORITHMS)} "
                                 f"and SERVER one of {', '.join(SERVER_STEPS)}", param_hint="--methods")
    return algorithm, server or "none"


def summary(report: dict) -> dict:
    history = report["history"]
    server_s = report["server_seconds_per_round"]
    out = {f"rounds_to_{t}": rounds_to_target(history, t / 100) for t in (75, 80, 85)}
    out.update(final_accuracy=report["final_accuracy"], last5_accuracy=mean_last_accuracy(history, 5),
               best_accuracy=report["best_accuracy"], seconds_per_round=report["seconds_per_round"],
               server_seconds_per_round=server_s,
               server_share=server_s / report["seconds_per_round"] if server_s else None)
    return out


def mean_over_seeds(rows: list[dict]) -> dict:
    """Numbers averaged over seeds; a rounds_to_* is null unless every seed reached the target (what is
    not a number, such as each seed's `machine`, stays in per_seed only)."""
    out = {}
    for key in rows[0]:
        values = [r[key] for r in rows]
        if all(v is None or isinstance(v, (int, float)) for v in values):
            out[key] = None if any(v is None for v in values) else float(np.mean(values))
    return out


def diagnose_plot(reports: list[dict]):
    """Per method: the round's ensemble, the aggregate and the global model, accuracy per round."""
    curves = {}
    for r in reports:
        rows = [h for h in r["history"] if "diagnose_ensemble_accuracy" in h]
        for key, label in (("diagnose_ensemble_accuracy", "ensemble"),
                           ("diagnose_logit_ensemble_accuracy", "logit ensemble (class-form FTG's teacher)"),
                           ("diagnose_aggregate_accuracy", "aggregate"),
                           ("diagnose_global_accuracy", "after server step")):
            if label == "after server step" and r["config"]["federate"]["server"] == "none":
                continue
            points = [(h["round"], h[key]) for h in rows if key in h]  # runs from before a key lack it
            if points:
                curves[f"{r['method']} {label}"] = points
    return line_plot(curves, title="is there anything to distill? (first test images)") if curves else None


def with_seeds_of(old: dict | None, new: dict) -> dict:
    """`new`'s entry with the seeds `old` measured and `new` did not: a later `--seeds 1` adds to seed 0's
    figures rather than replacing them (per_seed is kept in the order of seeds; the means are redone)."""
    if not old or "per_seed" not in old or "per_seed" not in new:
        return new
    rows = {seed: row for seed, row in zip(old["seeds"], old["per_seed"])}
    rows.update(zip(new["seeds"], new["per_seed"]))
    seeds = sorted(rows)
    return {**mean_over_seeds([rows[s] for s in seeds]), "seeds": seeds, "per_seed": [rows[s] for s in seeds]}


def merged(path: str, result: dict) -> dict:
    """What `path` holds with this run's entries put over it, method by method and seed by seed: read at
    every save, so that runs of other methods, models or seeds writing the same file keep their figures."""
    on_disk: dict = json.loads(Path(path).read_text()) if Path(path).is_file() else {}
    for model, entries in result.items():
        held = on_disk.setdefault(model, {})
        for key, entry in entries.items():
            held[key] = with_seeds_of(held.get(key), entry)
    return on_disk


@click.command()
@click.option("--methods", default=DEFAULT, show_default=True, help="comma-separated ALGORITHM[+SERVER]")
@click.option("--models", default=None, help="comma-separated registry models (default: the config's)")
@click.option("--seeds", default="0", show_default=True, help="comma-separated seeds (initialization, node "
              "sampling, data order; the partition keeps the config's seed)")
@click.option("--rounds", default=30, show_default=True, help="round budget of every method")
@click.option("--config", default=str(CONFIG), show_default=True, help="the base TOML")
@click.option("--diagnose", default=0, show_default=True,
              help="per round, ensemble / aggregate / global accuracy on the first N test images (0: off)")
@click.option("--set", "overrides", multiple=True, metavar="TABLE.FIELD=VALUE",
              help="override a field of the config for every method, e.g. --set ftg.generator_ema=0.99 "
                   "(repeatable; give such runs a --tag)")
@click.option("--tag", default="", help="a variant's name: its JSON keys are METHOD@TAG and its run folders "
              "METHOD-TAG-seed-S")
@click.option("--out", default="runs/rounds", show_default=True, help="run folders go here")
@click.option("--json-out", default=None, help="write the JSON here (merged into what it holds: model, method and seed "
              "by seed, so a later --seeds 1 adds to seed 0)")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps")
def main(methods: str, models: str | None, seeds: str, rounds: int, config: str, diagnose: int,
         overrides: tuple[str, ...], tag: str, out: str, json_out: str | None, device: str) -> None:
    parsed = {method: parse(method) for method in methods.split(",")}  # refused before any work
    # per algorithm and server step, so that their own tables of the TOML ([fedprox] mu, [ftg] ...) are read
    bases = {(a, s): FederatedRunConfig.from_toml(config, [*overrides, f'federate.algorithm="{a}"',
                                                           f'federate.server="{s}"'])
             for a, s in parsed.values()}
    base = next(iter(bases.values()))
    suffix = f"-{tag}" if tag else ""
    seed_list = [int(s) for s in seeds.split(",")]
    train, test = load_dataset(base.data, "train"), load_dataset(base.data, "test")
    result: dict = {}
    machine = cpu_name()  # the run folders are this machine's
    for model in (models.split(",") if models else [base.federate.model]):
        reports = []
        for method, (algorithm, server) in parsed.items():
            per_seed = []
            for seed in seed_list:
                cfg = bases[(algorithm, server)]
                cfg = dataclasses.replace(cfg, federate=dataclasses.replace(
                    cfg.federate, rounds=rounds, device=device, model=model, seed=seed, diagnose_images=diagnose))
                run = Path(out) / model / f"{method.replace('+', '-')}{suffix}-seed-{seed}"
                report = federate(cfg, run, resume=(run / "checkpoint.pt").exists(), progress=False, train=train,
                                  test=test)
                if seed == seed_list[0]:
                    reports.append(report)
                per_seed.append({**summary(report), "machine": machine})
            key = f"{method}@{tag}" if tag else method
            result.setdefault(model, {})[key] = {**mean_over_seeds(per_seed), "seeds": seed_list, "per_seed": per_seed}
            result.setdefault("setting", {})[model] = {"config": str(config), "rounds": rounds,
                                                       "fedinv_version": __version__,
                                                       "partition": dataclasses.asdict(base.partition)}
            if json_out:  # after every method: a killed run keeps what it measured
                save_json(merged(json_out, result), json_out)
        rows, table, plot = compare(reports, (0.75, 0.8, 0.85))
        folder = Path(out) / model
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "table.md").write_text(table)
        plot.save(folder / "accuracy.png")
        picture = diagnose_plot(reports)
        if picture is not None:
            picture.save(folder / "diagnose.png")
    click.echo(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
