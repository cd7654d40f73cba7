"""Do the findings of the one-shot dataset distillation report (one-shot-dataset-distillation.txt)
hold, in the report's own settings, on Fashion-MNIST, with seeds?

A row is one finding in one setting with one value of its switch, for one seed. The rows of a
setting and seed share the partition and the teachers (OUT/SETTING-seed-S/teachers); rows whose
synthesis is the same share its store (OUT/SETTING-seed-S/stores/); every row trains its own
student (OUT/SETTING-seed-S/ROW/). Everything resumes: a killed run continues where it stopped,
a finished row is read back. Within a finding every row has the same synthesis budget.

Findings (report section; setting; switch values):
  adaptive           §III   1 teacher on all data; the student's new batches with the competition term
                            against it (a_comp 10) or without (0), same schedule; also the student's and
                            the teachers' accuracy on each fresh batch (Figure 3)
  local-data         §IV-B  1 teacher on half the labels, the student holds the other half; weight of the
                            synthetic (teacher) data against the local data 1 / 2 / 10 (local_weight 1/w)
  teachers-per-step  §IV-C  10 IID teachers: cycling (1) / sampling n = 3 / n = 5
  weighted-ce        §IV-D  10 teachers, mixed split (half uniform, half by class): label-weighted CE off / on
  head-mask          §IV-E  2 and 5 label-disjoint teachers: output-head masking on / off
  fixed-teachers     §VI    10 IID teachers, n = 3: teachers sampled at every step / once per batch

One record per row and seed (a variant is a finding: configs/<finding>.toml): finding, setting,
switch, value, student_accuracy, ensemble_accuracy, seconds (the row's wall time: the teachers when
this row trained them, its synthesis unless another row made the store, its student),
stage_seconds, per_class_accuracy and more. Run folders: OUT/findings/SETTING-seed-S, shared by
the findings of one setting (teachers-per-step and fixed-teachers share 10-iid's teachers and a store).
`python -m bench figures findings` draws, from the run folders, each finding's accuracy over epochs
(mean over seeds), the fresh-batch accuracies, class-wise bars and a confusion matrix for local-data,
and grids per setting.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import time
import tomllib
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from fedinv import __version__
from fedinv.config import DataConfig, PartitionConfig, to_dict
from fedinv.data.datasets import ImageTensors, dataset_info
from fedinv.data.partition import Partition, load_partition, make_partition, save_partition
from fedinv.oneshot.student.config import StudentConfig
from fedinv.oneshot.student.train import train_student
from fedinv.oneshot.synthesis.config import SynthesisConfig
from fedinv.oneshot.synthesis.store import copy_synthesis_store
from fedinv.oneshot.synthesis.synthesize import synthesize
from fedinv.oneshot.teachers import TeacherConfig, train_teachers
from fedinv.runtime import save_png
from fedinv.store import read_rows
from fedinv.train.resume import comparable
from fedinv.viz import bar_chart, class_grid, confusion_plot, line_plot, rows_per_class

from bench.setting import run_config, splits, study_fields
from bench.tables import Table

QUESTION = "Do the one-shot report's findings hold in its own settings on Fashion-MNIST?"
SEEDS = (0, 1, 2)


@dataclasses.dataclass(frozen=True)
class Setting:
    """A split of Fashion-MNIST and its teachers. `student_node`: the node whose data the student
    holds (it trains no teacher)."""

    partition: PartitionConfig
    student_node: int | None = None


SETTINGS = {
    "1-teacher-all-data": Setting(PartitionConfig(scheme="iid", num_nodes=1)),
    "1-teacher-half-labels": Setting(PartitionConfig(scheme="label-disjoint", num_nodes=2), student_node=1),
    "10-iid": Setting(PartitionConfig(scheme="iid", num_nodes=10)),
    "10-mixed": Setting(PartitionConfig(scheme="mixed", num_nodes=10)),
    "2-disjoint": Setting(PartitionConfig(scheme="label-disjoint", num_nodes=2)),
    "5-disjoint": Setting(PartitionConfig(scheme="label-disjoint", num_nodes=5)),
}
@dataclasses.dataclass(frozen=True)
class Budget:
    """What every row spends (configs/base.toml; configs/quick.toml for the test suite's quick run)."""

    dataset: str
    teachers: TeacherConfig
    synthesis: SynthesisConfig
    student: StudentConfig
    adaptive_images: int
    adaptive_epochs: int


def budget_of(cfg: dict[str, Any], device: str) -> Budget:
    rc, study = run_config(cfg, 0, device), study_fields(cfg)
    return Budget(rc.data.dataset, rc.teachers, rc.synthesis, rc.student, study["adaptive_images"],
                  study["adaptive_epochs"])


@dataclasses.dataclass(frozen=True)
class Finding:
    settings: tuple[str, ...]
    switch: str
    values: tuple[Any, ...]
    report: str  # the report's figure, for the table


FINDINGS = {
    "adaptive": Finding(("1-teacher-all-data",), "a_comp", (10.0, 0.0), "90.5% adaptive vs 63.9% (CIFAR-10)"),
    "local-data": Finding(("1-teacher-half-labels",), "synthetic_weight", (1.0, 2.0, 10.0),
                          "60.7% at weight 1, +3 points at 2, about the same at 10"),
    "teachers-per-step": Finding(("10-iid",), "teachers_per_step", (1, 3, 5), "cycling 74%, n = 3 80%, n = 5 no gain"),
    "weighted-ce": Finding(("10-mixed",), "weighted_ce", (False, True), "68.3% with weighted CE"),
    "head-mask": Finding(("2-disjoint", "5-disjoint"), "head_mask", (True, False),
                         "2 teachers: +9 points with masking (64.6%); 5 teachers: 43.8%"),
    "fixed-teachers": Finding(("10-iid",), "fixed_teachers", (False, True), "open idea (§VI), not measured"),
}


def row_configs(finding: str, value: Any, seed: int, device: str,
                budget: Budget) -> tuple[SynthesisConfig, StudentConfig]:
    """The synthesis and student configs of one row."""
    syn = dataclasses.replace(budget.synthesis, seed=seed, device=device)
    student = dataclasses.replace(budget.student, seed=seed, device=device)
    if finding == "adaptive":
        syn = dataclasses.replace(syn, a_comp=value, num_images=budget.adaptive_images)
        student = dataclasses.replace(student, epochs=budget.adaptive_epochs, adaptive_batches=1, adaptive_every=1)
    elif finding == "local-data":  # only the teacher's labels are synthesized; local CE weighted 1 / w
        syn = dataclasses.replace(syn, label_sampler="proportional")
        student = dataclasses.replace(student, local_weight=1.0 / value)
    elif finding == "fixed-teachers":
        syn = dataclasses.replace(syn, teachers_per_step=3, fixed_teachers=value)
    else:
        syn = dataclasses.replace(syn, **{FINDINGS[finding].switch: value})
    return syn, student


def store_key(syn: SynthesisConfig) -> str:
    """A short name for a synthesis config (run-time fields such as the device left out)."""
    return hashlib.sha256(json.dumps(comparable(syn), sort_keys=True).encode()).hexdigest()[:12]


def value_name(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return f"{value:g}" if isinstance(value, float) else str(value)


def setting_dir(out: Path, setting: str, seed: int) -> Path:
    return out / f"{setting}-seed-{seed}"


def prepare_setting(out: Path, setting: str, seed: int, train: ImageTensors, test: ImageTensors,
                    device: str, budget: Budget) -> tuple[Partition, Path, float]:
    """The setting's partition and teachers (made once per seed); returns them and the seconds spent now."""
    folder, spec = setting_dir(out, setting, seed), SETTINGS[setting]
    t0 = time.perf_counter()
    manifest = folder / "partition.json"
    if manifest.is_file():
        part = load_partition(manifest)
    else:
        cfg = dataclasses.replace(spec.partition, seed=seed)
        part = make_partition(train.labels.numpy(), train.info.num_classes, cfg, DataConfig(budget.dataset))
        save_partition(part, train.labels.numpy(), manifest, train.info.class_names)
    nodes = [k for k in range(part.num_nodes) if k != spec.student_node]
    teachers = folder / "teachers"
    if not (teachers / "report.json").is_file():
        train_teachers(part, dataclasses.replace(budget.teachers, seed=seed, device=device), teachers, nodes=nodes,
                       progress=False, train=train, test=test)
    return part, teachers, time.perf_counter() - t0


def run_row(out: Path, finding: str, setting: str, value: Any, seed: int, train: ImageTensors, test: ImageTensors,
            device: str, budget: Budget) -> dict[str, Any]:
    part, teachers, teacher_s = prepare_setting(out, setting, seed, train, test, device, budget)
    folder = setting_dir(out, setting, seed)
    syn, student_cfg = row_configs(finding, value, seed, device, budget)
    row_dir = folder / f"{finding}-{value_name(value)}"
    report_file = row_dir / "student" / "report.json"
    seconds = {"teachers": teacher_s}
    key = store_key(syn)
    store = folder / "stores" / f"{key}.h5"  # rows with the same synthesis share it
    if not report_file.is_file():
        t0 = time.perf_counter()
        if not (folder / "stores" / f"{key}.done").is_file():
            synthesize(teachers, store, syn, resume=store.exists(), progress=False)
            (folder / "stores" / f"{key}.done").write_text(json.dumps(to_dict(syn)))
        seconds["synthesize"] = time.perf_counter() - t0
        if student_cfg.adaptive_batches:  # new batches go to the row's own copy
            own = row_dir / "synthetic.h5"
            if not own.exists():
                copy_synthesis_store(store, own)
            store = own
        local = None
        if SETTINGS[setting].student_node is not None:
            local = train.subset(part.indices[SETTINGS[setting].student_node])
        t0 = time.perf_counter()
        train_student(store, row_dir / "student", student_cfg, teachers_dir=teachers, local=local, test=test,
                      eval_every=5, progress=False)
        seconds["train_student"] = time.perf_counter() - t0
        (row_dir / "seconds.json").write_text(json.dumps(seconds))
    else:
        seconds = json.loads((row_dir / "seconds.json").read_text()) if (row_dir / "seconds.json").is_file() else {}
    report = json.loads(report_file.read_text())
    ensemble = json.loads((teachers / "report.json").read_text())
    fresh = [{k: h[k] for k in ("epoch", "fresh_student_accuracy", "fresh_teacher_accuracy")}
             for h in report["history"] if "fresh_student_accuracy" in h]
    return {"finding": finding, "setting": setting, "switch": FINDINGS[finding].switch, "value": value,
            "seed": seed, "method": syn.method, "student_accuracy": report["test_accuracy"],
            "ensemble_accuracy": ensemble["ensemble_accuracy"], "teacher_accuracy": ensemble["node_accuracy"],
            "seconds": sum(seconds.values()), "stage_seconds": seconds, "store_images": report["store_images"],
            "per_class_accuracy": report["per_class_accuracy"], "fresh_batches": fresh,
            "teacher_labels": sorted(teacher_classes(ensemble)),
            "fedinv_version": __version__}


def all_rows(names: list[str]) -> list[tuple[str, str, Any]]:
    return [(f, s, v) for f in names for s in FINDINGS[f].settings for v in FINDINGS[f].values]


def teacher_classes(teachers_report: dict) -> frozenset[int]:
    """The labels a setting's teachers were trained on, from their report's label counts."""
    return frozenset(int(k) for k in np.flatnonzero(np.array(teachers_report["label_counts"]).sum(0)))


def half_accuracy(per_class: list[float], owned: frozenset[int], on_owned: bool) -> float:
    """Mean class-wise accuracy over the classes in `owned` (on_owned) or over the others."""
    return float(np.mean([a for k, a in enumerate(per_class) if (k in owned) == on_owned]))


def mean_curve(reports: list[dict], key: str) -> list[tuple[float, float]]:
    """Mean over seeds of `key` per epoch (epochs where every seed has it)."""
    by_epoch: dict[int, list[float]] = {}
    for r in reports:
        for h in r["history"]:
            if h.get(key) is not None:
                by_epoch.setdefault(h["epoch"], []).append(h[key])
    return [(float(e), float(np.mean(v))) for e, v in sorted(by_epoch.items()) if len(v) == len(reports)]


@dataclasses.dataclass
class Row:
    """A row's finished seeds: their student reports, in seed order."""

    setting: str
    value: Any
    reports: list[dict]
    seeds: list[int]


def finished_rows(out: Path, finding: str, seeds: list[int]) -> dict[str, Row]:
    """The finding's rows with at least one finished seed, by their legend label."""
    spec, rows = FINDINGS[finding], {}
    for setting in spec.settings:
        for value in spec.values:
            row = Row(setting, value, [], [])
            for seed in seeds:
                path = setting_dir(out, setting, seed) / f"{finding}-{value_name(value)}" / "student" / "report.json"
                if path.is_file():
                    row.reports.append(json.loads(path.read_text()))
                    row.seeds.append(seed)
            label = f"{spec.switch}={value_name(value)}"
            if row.reports:
                rows[f"{setting} {label}" if len(spec.settings) > 1 else label] = row
    return rows


def saved(picture: Any, path: Path) -> Path:
    save_png(picture, path)
    return path


def draw(out: Path, seeds: list[int], plots: Path, budget: Budget) -> list[Path]:
    """The findings' pictures from the finished rows under `out`: accuracy over epochs per finding,
    adaptive's fresh batches, local-data's class bars, halves and confusion matrix, the grids."""
    plots.mkdir(parents=True, exist_ok=True)

    @functools.cache
    def owned(setting: str, seed: int) -> frozenset[int]:  # each teachers' report read once
        return teacher_classes(json.loads((setting_dir(out, setting, seed) / "teachers" / "report.json").read_text()))

    written = []
    for finding in FINDINGS:
        rows = finished_rows(out, finding, seeds)
        if not rows:
            continue
        curves = {label: mean_curve(row.reports, "test_accuracy") for label, row in rows.items()}
        written.append(saved(line_plot(curves, title=f"{finding}: test accuracy, mean over seeds", x_label="epoch"),
                             plots / f"{finding}-accuracy.png"))
        if finding == "adaptive":
            written += draw_fresh_batches(rows, plots)
        if finding == "local-data":
            written += draw_local_data(rows, plots, list(dataset_info(budget.dataset).class_names), owned)
    return written + draw_grids(out, seeds[0], plots, budget)


def draw_fresh_batches(rows: dict[str, Row], plots: Path) -> list[Path]:
    """The student's and the teachers' accuracy on each new batch, before training on it."""
    fresh = {}
    for label, row in rows.items():
        fresh[f"student, {label}"] = mean_curve(row.reports, "fresh_student_accuracy")
        fresh[f"teachers, {label}"] = mean_curve(row.reports, "fresh_teacher_accuracy")
    return [saved(line_plot(fresh, title="accuracy on each fresh batch (report's Figure 3)", x_label="epoch"),
                  plots / "adaptive-fresh-batches.png")]


def draw_local_data(rows: dict[str, Row], plots: Path, classes: list[str],
                    owned: Callable[[str, int], frozenset[int]]) -> list[Path]:
    """Class-wise bars and the confusion matrix of the first finished seed (the teacher's classes
    starred), and the accuracy on the teacher's and on the student's own classes over seeds: each
    seed gives the teacher other labels, so the halves are split per seed by their owner."""
    first = next(iter(rows.values()))
    mine = owned(first.setting, first.seeds[0])
    marked = [f"*{c}" if k in mine else c for k, c in enumerate(classes)]
    per_class, halves, written = {}, {}, []
    for row in rows.values():
        name = f"weight {value_name(row.value)}"
        per_class[name] = row.reports[0]["per_class_accuracy"]
        halves[name] = [float(np.mean([half_accuracy(r["per_class_accuracy"], owned(row.setting, seed), on_owned)
                                       for r, seed in zip(row.reports, row.seeds)])) for on_owned in (True, False)]
        if row.value == FINDINGS["local-data"].values[0]:
            written.append(saved(confusion_plot(np.array(row.reports[0]["confusion_matrix"]), marked),
                                 plots / "local-data-confusion.png"))
    written.append(saved(bar_chart(marked, per_class, title="local-data: class-wise accuracy per weight of the "
                                   f"synthetic data, seed {first.seeds[0]} (*: the teacher's classes)"),
                         plots / "local-data-classes.png"))
    written.append(saved(bar_chart(["teacher's", "student's"], halves, title="local-data: accuracy on the teacher's "
                                   "and on the student's own classes, mean over seeds"),
                         plots / "local-data-halves.png"))
    return written


GRIDS = (("10-iid", "teachers-per-step", 1), ("10-iid", "teachers-per-step", 3), ("10-iid", "teachers-per-step", 5),
         ("1-teacher-all-data", "adaptive", 10.0), ("2-disjoint", "head-mask", True), ("5-disjoint", "head-mask", True))


def draw_grids(out: Path, seed: int, plots: Path, budget: Budget) -> list[Path]:
    """Six images per class from the stores in GRIDS that are finished for `seed`."""
    written = []
    names = dataset_info(budget.dataset).class_names
    for setting, finding, value in GRIDS:
        key = store_key(row_configs(finding, value, seed, "cpu", budget)[0])
        store = setting_dir(out, setting, seed) / "stores" / f"{key}.h5"
        if not store.with_suffix(".done").is_file():  # not made yet, or still being written
            continue
        images, labels, _ = read_rows(store)
        wanted = list(range(10))
        rows = rows_per_class(labels.numpy(), 6, wanted, seed=0)
        written.append(saved(class_grid(images[rows], labels[rows], names, 6, wanted, 2),
                             plots / f"grid-{setting}-{finding}-{value_name(value)}.png"))
    return written


def table(lines: list[dict]) -> Table:
    """Per finding, setting and switch value the student's accuracy as mean ± std over seeds, its paired
    difference to the finding's first value, the ensemble, seconds, the report's figure."""
    rows = {(r["finding"], r["setting"], json.dumps(r["value"]), r["seed"]): r for r in lines if r.get("finding")}
    out = []

    def pm(values: list[float], scale: float = 100.0) -> str:
        v = scale * np.array(values)
        return f"{v.mean():.2f} ± {v.std(ddof=1):.2f}" if len(v) > 1 else f"{v.mean():.2f}"

    for finding, spec in FINDINGS.items():
        for setting in spec.settings:
            first = {seed: r for (f, s, v, seed), r in rows.items()
                     if (f, s, v) == (finding, setting, json.dumps(spec.values[0]))}
            for value in spec.values:
                key = (finding, setting, json.dumps(value))
                mine = [r for (f, s, v, _), r in sorted(rows.items()) if (f, s, v) == key]
                if not mine:
                    continue
                paired = [r["student_accuracy"] - first[r["seed"]]["student_accuracy"]
                          for r in mine if r["seed"] in first]
                diff = ("" if value == spec.values[0] or not paired
                        else f"{'+' if np.mean(paired) >= 0 else ''}{pm(paired)}")
                out.append([finding, setting, f"{spec.switch} = {value_name(value)}", len(mine),
                            pm([r["student_accuracy"] for r in mine]), diff,
                            pm([r["ensemble_accuracy"] for r in mine]), f"{np.mean([r['seconds'] for r in mine]):.0f}",
                            spec.report if value == spec.values[0] else ""])
    return Table(["finding", "setting", "switch", "seeds", "student", "vs first value (paired)", "ensemble",
                  "seconds", "report"], out)


def first_measurement(lines: list[dict]) -> Table:
    """The first measurement (other settings, one seed: 5 Dirichlet or label-disjoint nodes), kept apart."""
    rows = [[r["group"], f"{r['switch']} = {r['value']}", f"{100 * r['ensemble_accuracy']:.2f}",
             f"{100 * r['fedavg_accuracy']:.2f}", f"{100 * r['student_accuracy']:.2f}", f"{r['seconds']:.0f}"]
            for r in lines if r.get("row")]
    return Table(["group", "switch", "ensemble", "one-shot FedAvg", "student", "seconds"], rows)


TABLES = {"findings": table, "first-measurement": first_measurement}


def headline(records: list[dict]) -> str:
    rows = {(r["value"], r["seed"]): r["student_accuracy"] for r in records
            if r.get("finding") == "head-mask" and r["setting"] == "2-disjoint"}
    paired = [rows[(True, s)] - rows[(False, s)] for v, s in rows if v and (False, s) in rows]
    return (f"head masking with 2 label-disjoint teachers: {100 * np.mean(paired):+.2f} points paired over "
            f"{len(paired)} seeds (the report: +9)" if paired else "")


def run(cfg: dict[str, Any], seed: int, out: Path, device: str) -> Iterator[dict[str, Any]]:
    """The rows of the variant's finding for one seed. Settings live in the study's run folder,
    OUT/findings/SETTING-seed-S, shared by every finding of that setting."""
    budget, finding = budget_of(cfg, device), study_fields(cfg)["finding"]
    train, test = splits(DataConfig(budget.dataset))
    for f, setting, value in all_rows([finding]):
        yield run_row(out.parent.parent, f, setting, value, seed, train, test, device, budget)


def figures(runs: Path, seeds: list[int], folder: Path) -> list[Path]:
    """The pictures of the finished rows under `runs` (OUT/findings)."""
    return draw(runs, seeds, folder, budget_of(tomllib.loads((Path(__file__).parent / "configs" / "base.toml")
                                                              .read_text()), "cpu"))
