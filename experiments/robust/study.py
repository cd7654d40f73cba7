"""Can one dishonest node take over? Node 0 attacks (fedinv.attacks: inflate, flip, random) and the
run goes on with fedinv's default settings and with its robust ones.

One-shot (5 nodes): node 0's teacher file is altered as a dishonest node would send it (its label
claims inflated, its model retrained on flipped labels, or random weights with its BatchNorm
statistics), the others' are the honest ones; then synthesis and a student with claims trusted
(default) and checked (robust: `synthesis.claims`). Multi-round (10 nodes, FedAvg): node 0 attacks
in every round it takes part in; the global model with the weighted mean (default) and a robust rule
(`federate.aggregation`: the trimmed mean, or multi-Krum in the -mkrum variants, with a threshold and
a size cap in the -mkrum-2.5 and -cap-2 ones). One record per (variant, seed): both settings' test
accuracy (and per class, and whom the rule left out); the costs are read against the honest run of the
same seed with the default settings. Everything resumes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterator
from unittest import mock

import torch

from bench.records import latest
from bench.setting import run_config, splits, study_fields, teachers
from bench.tables import Table, mean_std
from fedinv.attacks import ATTACKS, AttackConfig, flip_labels, inflate_counts, random_with_statistics
from fedinv.checkpoint import TEACHER, load_checkpoint, save_checkpoint
from fedinv.data.datasets import ImageTensors
from fedinv.data.partition import load_partition
from fedinv.evaluate import teacher_report
from fedinv.federated.config import FederateConfig, FederatedRunConfig
from fedinv.federated.rounds import federate, mean_last_accuracy, node_data
from fedinv.models import seeded_model
from fedinv.oneshot.student.report import finished_student
from fedinv.oneshot.student.train import train_student
from fedinv.oneshot.synthesis import claims
from fedinv.oneshot.synthesis.synthesize import synthesize
from fedinv.oneshot.teacher_files import load_teacher_checkpoints, teacher_paths
from fedinv.oneshot.teachers import train_node
from fedinv.runtime import Stream, resolve_device, save_json

QUESTION = "Can one dishonest node take over the one-shot ensemble or the FedAvg model, and what do the robust " \
           "settings give back?"
SEEDS = (0, 1, 2)
SETTINGS = ("default", "robust")
MODES = ("oneshot", "rounds")


def check(cfg: dict[str, Any]) -> None:
    """A variant's [study] table names a known mode, and fedinv's own configs accept its attack and robust
    rule (the runner asks before any run)."""
    study = study_fields(cfg)
    if study["mode"] not in MODES:
        raise ValueError(f"[study] mode = {study['mode']!r}; one of {', '.join(MODES)}")
    for what, make in (("attack", lambda: AttackConfig(kind=study["attack"], factor=study["factor"])),
                       ("robust rule", lambda: FederateConfig(aggregation=study["robust_aggregation"],
                                                              krum_threshold=study["krum_threshold"],
                                                              size_cap=study["size_cap"]))):
        try:
            make()
        except ValueError as e:
            raise ValueError(f"[study] {what}: {e}") from None


def run(cfg: dict[str, Any], seed: int, out: Path, device: str) -> Iterator[dict[str, Any]]:
    study = study_fields(cfg)
    attack = AttackConfig(kind=study["attack"], factor=study["factor"])
    if study["mode"] == "oneshot":
        yield oneshot(cfg, study, attack, seed, out, device)
    else:
        yield rounds(cfg, study, attack, seed, out, device)


def probe_size(study: dict[str, Any]) -> contextlib.AbstractContextManager:
    """The claims check's probe at the study's size (quick runs shrink it)."""
    stack = contextlib.ExitStack()
    for key, name in (("probe_per_class", "PROBE_PER_CLASS"), ("probe_iterations", "PROBE_ITERATIONS")):
        if key in study:
            stack.enter_context(mock.patch.object(claims, name, study[key]))
    return stack


def oneshot(cfg: dict[str, Any], study: dict[str, Any], attack: AttackConfig, seed: int, out: Path,
            device: str) -> dict[str, Any]:
    rc = run_config(cfg, seed, device)
    honest, honest_report, _ = teachers(rc, out)  # shared by the study's one-shot variants
    train, test = splits(rc.data)
    folder, report = attacked_teachers(honest, attack, rc, out / "teachers", train, test)
    accuracy, checks = {}, None
    for setting, claimed in zip(SETTINGS, ("trusted", "checked")):
        run_dir = out / setting
        syn = dataclasses.replace(rc.synthesis, claims=claimed)
        if not (run_dir / "synthesis.json").is_file():
            with probe_size(study):
                save_json(synthesize(folder, run_dir / "synthetic.h5", syn, progress=False), run_dir / "synthesis.json")
        stats = json.loads((run_dir / "synthesis.json").read_text())
        checks = stats.get("claims", checks)
        student = finished_student(run_dir / "student", rc.student) or train_student(
            run_dir / "synthetic.h5", run_dir / "student", rc.student, teachers_dir=folder, test=test, progress=False)
        accuracy[setting] = student["test_accuracy"]
    return {"mode": "oneshot", "attack": attack.kind, "alpha": rc.partition.alpha,
            "num_nodes": rc.partition.num_nodes, "default_accuracy": accuracy["default"],
            "robust_accuracy": accuracy["robust"], "honest_ensemble_accuracy": honest_report["ensemble_accuracy"],
            "ensemble_accuracy": report["ensemble_accuracy"], "attacker_accuracy": report["node_accuracy"][0],
            "claims_check": checks}


def attacked_teachers(honest: Path, attack: AttackConfig, rc: Any, folder: Path, train: ImageTensors,
                      test: ImageTensors) -> tuple[Path, dict[str, Any]]:
    """The teachers folder the server receives when node 0 attacks (the honest one when none), and
    its teacher report (the ensemble by the claims as sent)."""
    if attack.kind == "none":
        return honest, json.loads((honest / "report.json").read_text())
    if (folder / "report.json").is_file():
        return folder, json.loads((folder / "report.json").read_text())
    folder.mkdir(parents=True, exist_ok=True)
    for path in teacher_paths(honest)[1:]:
        shutil.copy2(path, folder / path.name)
    node = load_checkpoint(honest / "node-0.pt", kind=TEACHER)
    k = node.num_classes
    if attack.kind == "inflate":
        node = dataclasses.replace(node, label_counts=inflate_counts(torch.tensor(node.label_counts),
                                                                     attack.factor).tolist())
    elif attack.kind == "random":
        info = train.info
        fresh = seeded_model(rc.teachers.model, info, rc.teachers.seed, Stream.ATTACK_INIT, 0).state_dict()
        node = dataclasses.replace(node, state_dict=random_with_statistics(fresh, node.state_dict))
    elif attack.kind == "flip":
        split = train.subset(load_partition(honest.parent / "partition.json").indices[0])
        flipped = ImageTensors(split.images, flip_labels(split.labels, k), split.info, split.split)
        node = train_node(0, flipped, test, rc.teachers, folder / "flipped", progress=False)
    save_checkpoint(node, folder / "node-0.pt")
    report = teacher_report(load_teacher_checkpoints(teacher_paths(folder)), test, resolve_device(rc.teachers.device))
    save_json(report, folder / "report.json")
    return folder, report


def rounds(cfg: dict[str, Any], study: dict[str, Any], attack: AttackConfig, seed: int, out: Path,
           device: str) -> dict[str, Any]:
    tables = {k: cfg[k] for k in ("data", "partition", "federate") if k in cfg}
    tables["partition"] = {**tables["partition"], "num_nodes": study["rounds_nodes"], "seed": seed}
    base = FederatedRunConfig.from_dict(tables, defaults=FederatedRunConfig())
    train, test = splits(base.data)
    accuracy, last5, left, per_class = {}, {}, {}, {}
    threshold, cap = study.get("krum_threshold", 0.0), study.get("size_cap", 0.0)
    for setting, rule in zip(SETTINGS, ("mean", study["robust_aggregation"])):
        fc = dataclasses.replace(base.federate, aggregation=rule, seed=seed, device=device,
                                 krum_threshold=threshold if rule == "multi-krum" else 0.0,
                                 size_cap=cap if setting == "robust" else 0.0)
        report = federate(dataclasses.replace(base, federate=fc, attack=attack), out / setting, progress=False,
                          train=train, test=test)
        accuracy[setting], last5[setting] = report["final_accuracy"], mean_last_accuracy(report["history"], 5)
        left[setting] = report.get("left_out")  # Krum rules: node -> [rounds left out, rounds taken part in]
        per_class[setting] = report["per_class_accuracy"]
    counts = node_data(dataclasses.replace(base, federate=fc), train).counts.double()
    return {"mode": "rounds", "attack": attack.kind, "alpha": base.partition.alpha,
            "num_nodes": base.partition.num_nodes, "rounds": base.federate.rounds,
            "robust_aggregation": study["robust_aggregation"], "krum_threshold": threshold, "size_cap": cap,
            "default_accuracy": accuracy["default"],
            "robust_accuracy": accuracy["robust"], "default_last5_accuracy": last5["default"],
            "robust_last5_accuracy": last5["robust"], "robust_left_out": left["robust"],
            "default_per_class": per_class["default"], "robust_per_class": per_class["robust"],
            "node0_share": float(counts[0].sum() / counts.sum()),
            "node0_class_shares": (counts[0] / counts.sum(0)).tolist()}  # of each class's training images


def robust_rule(r: dict) -> str:
    """What the robust setting of a record was: the one-shot claims check, or the multi-round aggregation
    (multi-krum with its threshold where it had one; the size cap where there was one)."""
    rule = r.get("robust_aggregation", "claims checked")
    if rule == "multi-krum" and r.get("krum_threshold"):
        rule = f"{rule} > {r['krum_threshold']:g}x median"
    return f"{rule}, sizes capped at {r['size_cap']:g}x median" if r.get("size_cap") else rule


def groups(records: list[dict]) -> dict[tuple[str, str, str], dict[int, dict]]:
    """(mode, attack, robust rule) -> seed -> record (the last line of a seed counts)."""
    out: dict[tuple[str, str, str], dict[int, dict]] = defaultdict(dict)
    for r in latest(records):
        out[(r["mode"], r["attack"], robust_rule(r))][r["seed"]] = r
    return out


def rules(g: dict[tuple[str, str, str], dict[int, dict]], mode: str) -> list[str]:
    """The robust rules measured in `mode`, the study's base one first."""
    return sorted({rule for m, _, rule in g if m == mode}, key=lambda rule: (rule != "trimmed-mean", rule))


def baseline(g: dict[tuple[str, str, str], dict[int, dict]], mode: str, rule: str) -> dict[int, dict]:
    """Per seed, an honest record to read the honest run with the default settings from: the rule's own,
    else another rule's (every honest variant's default run is the same run, the mean without attack)."""
    out: dict[int, dict] = {}
    for (m, attack, _), runs in g.items():
        if m == mode and attack == "none":
            for seed, r in runs.items():
                out.setdefault(seed, r)
    return {**out, **g.get((mode, "none", rule), {})}


def costs(runs: dict[int, dict], honest: dict[int, dict], setting: str, measure: str = "accuracy") -> list[float]:
    """Per seed that both have: the run's `measure` with `setting` less the honest run's with the defaults."""
    return [runs[s][f"{setting}_{measure}"] - honest[s][f"default_{measure}"] for s in runs if s in honest]


def setting_cells(runs: dict[int, dict], honest: dict[int, dict], measure: str = "accuracy") -> list[str]:
    """`measure` with the default and the robust settings, then each one's cost against the honest
    run with the defaults (mean ± std over the seeds; "-" without a paired honest run)."""
    rs = list(runs.values())
    cells = [mean_std(r[f"{setting}_{measure}"] for r in rs) for setting in SETTINGS]
    return cells + [mean_std(p) if (p := costs(runs, honest, setting, measure)) else "-" for setting in SETTINGS]


def summary(records: list[dict]) -> Table:
    """Per mode, robust rule and attack: the test accuracy with the default and the robust settings, and
    what the attack costs against the honest run of the same seed with the default settings (points)."""
    g = groups(records)
    rows = []
    for mode in ("oneshot", "rounds"):
        for rule in rules(g, mode):
            for attack in ATTACKS:
                runs = g.get((mode, attack, rule))
                if not runs:
                    continue
                rows.append([mode, rule, attack, len(runs), *setting_cells(runs, baseline(g, mode, rule))])
    return Table(["mode", "robust", "attack", "seeds", "default %", "robust %", "cost, default (points)",
                  "cost, robust (points)"], rows,
                 "One-shot: 5 nodes, node 0 dishonest, claims trusted (default) or checked (robust); multi-round: "
                 "FedAvg, 10 nodes, half a round, 30 rounds, the mean (default) or the robust rule. Cost: the "
                 "run's accuracy less the honest run's with the default settings, same seed; mean ± std.")


def checks(records: list[dict]) -> Table:
    """What the one-shot claims check did with node 0's claim, per attack and seed."""
    rows = []
    for (mode, attack, _), runs in sorted(groups(records).items()):
        for seed, r in sorted(runs.items()):
            check = r.get("claims_check")
            if mode != "oneshot" or not check:
                continue
            scores = ", ".join("-" if s is None else f"{s:.2f}" for s in check["scores"])
            claimed, used = sum(check["claimed"][0]), sum(check["used"][0])
            rows.append([attack, seed, f"{100 * r['ensemble_accuracy']:.2f}", scores,
                         "dropped" if 0 in check["dropped"] else f"{used:.0f} of {claimed:.0f}"])
    return Table(["attack", "seed", "ensemble % (claims as sent)", "node scores (0 first)", "node 0 counted"], rows,
                 "Node score: the node's teacher's agreement with the others' ensemble on probe images of the "
                 "classes it claims (fedinv/oneshot/synthesis/claims.py); under 0.6 x the median: dropped.")


def rounds_last5(records: list[dict]) -> Table:
    """The multi-round runs by the mean test accuracy of their last 5 rounds (a single round's accuracy
    swings by points from round to round under FedAvg at alpha 0.5)."""
    g = groups(records)
    rows = []
    for rule in rules(g, "rounds"):
        honest = baseline(g, "rounds", rule)
        for attack in ATTACKS:
            runs = g.get(("rounds", attack, rule))
            if not runs:
                continue
            rows.append([rule, attack, len(runs), *setting_cells(runs, honest, "last5_accuracy")])
    return Table(["robust", "attack", "seeds", "default %", "robust %", "cost, default (points)",
                  "cost, robust (points)"],
                 rows, "FedAvg, 10 nodes, half a round: the mean test accuracy of rounds 26-30, the mean (default) or "
                       "the robust rule; costs against the honest run with the mean, same seed.")


def node0_loss(records: list[dict]) -> Table:
    """Where the robust rules' cost under attack goes: node 0's data is lost with its update, and with it
    much of the one class node 0 holds most of (runs that record per-class accuracy and the partition)."""
    g = groups(records)
    rows = []
    for rule in rules(g, "rounds"):
        honest = baseline(g, "rounds", rule)
        for attack in ("flip", "random"):
            for seed, r in sorted(g.get(("rounds", attack, rule), {}).items()):
                h = honest.get(seed)
                if h is None or "node0_class_shares" not in r or "default_per_class" not in h:
                    continue
                shares = r["node0_class_shares"]
                top = max(range(len(shares)), key=shares.__getitem__)
                cost = [a - b for a, b in zip(r["robust_per_class"], h["default_per_class"])]
                others = [c for k, c in enumerate(cost) if k != top]
                dropped = r.get("robust_left_out") or {}
                left = dropped.get("0")
                rows.append([rule, attack, seed, f"{100 * r['node0_share']:.1f}%", f"{top}: {100 * shares[top]:.0f}%",
                             f"{left[0]} of {left[1]}" if left else "-", ", ".join(sorted(dropped, key=int)) or "-",
                             f"{100 * (r['robust_accuracy'] - h['default_accuracy']):+.2f}",
                             f"{100 * cost[top]:+.1f}", f"{100 * sum(others) / len(others):+.2f}"])
    return Table(["robust", "attack", "seed", "node 0's data", "its largest class share", "node 0 left out",
                  "nodes ever left out", "cost (points)", "cost on that class", "cost, mean of the others"], rows,
                 "FedAvg, 10 nodes; per-class test accuracy with the robust rule under attack less the honest run's "
                 "with the mean, same seed. Node 0's data: its share of the training set; its largest class "
                 "share: the class of which it holds the most, and how much of it.")


def overview(records: list[dict]) -> Table:
    """One row per mode and setting: the honest run's accuracy and what each attack costs (points, against
    the honest run with the default settings of the same seed); the results page's table."""
    g = groups(records)
    rows = []
    for mode in ("oneshot", "rounds"):
        measured = rules(g, mode)
        for setting, rule in [("default", measured[0] if measured else None)] + [("robust", r) for r in measured]:
            own, honest = g.get((mode, "none", rule), {}), baseline(g, mode, rule)
            if not honest:
                continue
            name = {"oneshot": "claims trusted", "rounds": "mean"}[mode] if setting == "default" else rule
            cells = [mean_std(p) if (p := costs(g.get((mode, attack, rule), {}), honest, setting)) else "-"
                     for attack in ATTACKS[1:]]
            rows.append([mode, name, len(own) or "-",
                         mean_std(r[f"{setting}_accuracy"] for r in own.values()) if own else "-", *cells])
    return Table(["mode", "setting", "seeds", "honest %", "cost: inflate", "cost: flip", "cost: random"], rows,
                 "Node 0 of 5 (one-shot) or of 10 (FedAvg, half a round, 30 rounds) dishonest. Cost: the run's "
                 "test accuracy less the honest run's with the default settings, same seed (points, mean ± std); "
                 "the goal: at most 2 with a robust setting, at most 0.5 lost by the honest run.")


TABLES = {"overview": overview, "summary": summary, "checks": checks, "rounds-last5": rounds_last5,
          "node0-loss": node0_loss}


def headline(records: list[dict]) -> str:
    g = groups(records)
    worst = {}
    for mode in ("oneshot", "rounds"):
        for rule in rules(g, mode):
            honest = baseline(g, mode, rule)
            for attack in ATTACKS[1:]:
                for setting in SETTINGS:
                    paired = costs(g.get((mode, attack, rule), {}), honest, setting)
                    if paired:
                        label = f"{mode} {setting}" if setting == "default" else f"{mode} {rule}"
                        worst[label] = min(worst.get(label, 0.0), *paired)
    if not worst:
        return ""
    return "largest cost of one dishonest node, points: " + "; ".join(f"{k}: {-100 * v:.1f}" for k, v in worst.items())
