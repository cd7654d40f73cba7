"""What the multi-round studies share: run each model x method of a variant, summarize its rounds,
and set each method beside its base optimizer's in a table.

A variant's config is a FederatedRunConfig TOML's tables and a [study] table: `models` (registry
models) and `methods` (ALGORITHM[+SERVER], e.g. "fedavg+ftg"). Each model x method runs in its own
resumable run folder (OUT/MODEL/METHOD); a finished one is read back, a killed one continues.
With [study] diagnose = N every round also records, on the first N test images, the accuracy of the
round's ensemble of local models, of the aggregate before the server step and of the global model
after it (OUT/MODEL/diagnose.png draws them).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Iterator

from bench.setting import splits
from bench.tables import Table
from fedinv.errors import ConfigError
from fedinv.federated.config import FederatedRunConfig
from fedinv.federated.registry import ALGORITHMS, SERVER_STEPS
from fedinv.federated.report import compare
from fedinv.federated.rounds import federate, mean_last_accuracy, rounds_to_target
from fedinv.runtime import save_png
from fedinv.viz import line_plot

TARGETS = (75, 80, 85)


def parse(method: str) -> tuple[str, str]:
    algorithm, _, server = method.partition("+")
    if algorithm not in ALGORITHMS or (server and server not in SERVER_STEPS):
        raise ConfigError(f"study.methods: {method!r}: use ALGORITHM[+SERVER] with ALGORITHM one of "
                          f"{', '.join(ALGORITHMS)} and SERVER one of {', '.join(SERVER_STEPS)}")
    return algorithm, server or "none"


def summary(report: dict) -> dict:
    history = report["history"]
    server_s = report["server_seconds_per_round"]
    out: dict[str, Any] = {f"rounds_to_{t}": rounds_to_target(history, t / 100) for t in TARGETS}
    out.update(final_accuracy=report["final_accuracy"], last5_accuracy=mean_last_accuracy(history, 5),
               best_accuracy=report["best_accuracy"], seconds_per_round=report["seconds_per_round"],
               server_seconds_per_round=server_s,
               server_share=server_s / report["seconds_per_round"] if server_s else None)
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
            points = [(h["round"], h[key]) for h in rows if key in h]
            if points:
                curves[f"{r['method']} {label}"] = points
    return line_plot(curves, title="is there anything to distill? (first test images)") if curves else None


def run_methods(cfg: dict[str, Any], seed: int, out: Path, device: str) -> Iterator[dict[str, Any]]:
    """One record per model x method of the variant: the summary of its rounds."""
    study = dict(cfg.get("study", {}))
    tables = {k: v for k, v in cfg.items() if k != "study"}
    methods = {m: parse(m) for m in study["methods"]}  # refused before any work
    bases = {(a, s): FederatedRunConfig.from_dict(
        {**tables, "federate": {**tables.get("federate", {}), "algorithm": a, "server": s}},
        defaults=FederatedRunConfig()) for a, s in methods.values()}
    base = next(iter(bases.values()))
    train, test = splits(base.data)
    for model in study.get("models") or [base.federate.model]:
        reports = []
        for method, (algorithm, server) in methods.items():
            cfg_m = bases[(algorithm, server)]
            cfg_m = dataclasses.replace(cfg_m, federate=dataclasses.replace(
                cfg_m.federate, device=device, model=model, seed=seed, diagnose_images=study.get("diagnose", 0)))
            run = out / model / method.replace("+", "-")
            report = federate(cfg_m, run, resume=(run / "checkpoint.pt").exists(), progress=False, train=train,
                              test=test)
            reports.append(report)
            yield {"model": model, "method": method, "rounds": cfg_m.federate.rounds, **summary(report)}
        rows, table, plot = compare(reports, tuple(t / 100 for t in TARGETS))
        (out / model / "table.md").write_text(table)
        save_png(plot, out / model / "accuracy.png")
        picture = diagnose_plot(reports)
        if picture is not None:
            save_png(picture, out / model / "diagnose.png")


def base_of(method: str) -> str:
    """The base optimizer of `method` (`fedavg+ftg` -> `fedavg`)."""
    return method.split("+")[0]


def saving(rounds: int | None, base: int | None) -> str:
    """Rounds saved against the base, as a share of the base's rounds ("-25%" = 25% more rounds)."""
    if rounds is None:
        return "never" if base is not None else "-"
    if base is None:
        return "base never"
    return f"{100 * (base - rounds) / base:+.0f}%"


def server_cell(share: float | None) -> str:
    if share is None:
        return "-"
    return f"{100 * share:.0f}%" if share >= 0.01 else "< 1%"


def rounds_table(records: list[dict]) -> Table:
    """Per model, seed and method (the variant named where it is not `base`): rounds to 75 / 80 / 85%
    beside its base optimizer's of the same model and seed in the `base` variant, final and last-5
    accuracy, the server step's share of a round. Seeds stay apart: they may have run on different
    machines."""
    latest = {(r["model"], r["seed"], r["variant"], r["method"]): r for r in records if r.get("method")}
    out = []
    for (model, seed, variant, method), r in sorted(latest.items(), key=lambda kv: (
            kv[0][0], base_of(kv[0][3]), kv[0][1], "+" in kv[0][3], kv[0][2] != "base", kv[0][2], kv[0][3])):
        base = latest.get((model, seed, "base", base_of(method))) if "+" in method else None
        reached = [r.get(f"rounds_to_{t}", "n/a") for t in TARGETS]  # the first records measured 80 and 85 only
        saved = "" if base is None else " / ".join(saving(v, base.get(f"rounds_to_{t}")) for v, t in zip(reached, TARGETS)
                                                   if v != "n/a")
        name = method if variant == "base" else f"{method} ({variant})"
        out.append([model, seed, name, *(v if v is not None else "-" for v in reached), saved,
                    f"{100 * r['final_accuracy']:.2f}", f"{100 * r.get('last5_accuracy', r.get('mean_last_5_accuracy')):.2f}",
                    server_cell(r.get("server_share"))])
    return Table(["model", "seed", "method", "rounds to 75%", "to 80%", "to 85%",
                  "fewer rounds than its base (75 / 80 / 85)", "final", "last 5", "server share"], out)
