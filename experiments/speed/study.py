"""How much faster is the pipeline at --precision auto than at fp32, at what accuracy, and how close is
each training stage to its bare ceiling?

Per (variant, seed): `make demo`'s one-shot pipeline (partition + teachers, fast synthesis, student) and a
multi-round FedAvg run, each stage wall-timed (stage_seconds; they resume, and a resumed stage adds the
seconds of each piece); the precision every stage recorded that it ran (`ran_on`); the teachers'
ensemble, one-shot FedAvg, student and final global accuracy; and a second student on the same store
that learns from the soft labels the store holds (no teachers in its step: what the teachers' share
costs in accuracy). Then, in the same process, each training
stage's own loop on `ceiling_images` real training images (teachers: `train_node`, one epoch; student:
`train_student`, one epoch of the store; local training: one FedAvg node update) against its bare
ceiling: the same model's forward + backward + SGD step on in-memory tensors at the same precision and
batch (the student's with the teachers' forward it needs), as images/s (each the best of 3 timings)
and their ratio; and the
teachers' share of a student step, now and in the layout of fedinv 0.2 (fp32, student not
channels_last). Timed: run it alone, or two processes with one thread each (`threads` says which).
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from bench.records import latest
from bench.setting import read_seconds, run_config, splits, study_fields, teachers, timed
from bench.tables import Table, mean, mean_std, number, pct
from fedinv.checkpoint import load_checkpoint
from fedinv.federated.config import FederatedRunConfig
from fedinv.federated.rounds import Federation, federate
from fedinv.models import place, seeded_model
from fedinv.oneshot.student.objective import student_objective
from fedinv.oneshot.student.report import finished_student
from fedinv.oneshot.student.train import train_student
from fedinv.oneshot.synthesis.ensemble import load_ensemble
from fedinv.oneshot.synthesis.synthesize import synthesize
from fedinv.oneshot.teachers import initial_model, train_node
from fedinv.runtime import Stream, resolve_device, resolve_precision, save_json
from fedinv.train import Stepper
from fedinv.train.objectives import classification_objective

QUESTION = "How much faster is --precision auto than fp32, at what accuracy, and how near its ceiling is each stage?"
SEEDS = (0, 1, 2)
STAGES = ("train_teachers", "synthesize", "train_student", "federate")
STAGE_LABELS = {"train_teachers": "teachers", "synthesize": "synthesis (fast)", "train_student": "student",
                "federate": "FedAvg, 10 rounds"}


def rounds_config(cfg: dict[str, Any], seed: int, device: str) -> FederatedRunConfig:
    """The multi-round run: [study.rounds]'s tables over the study's [data] and [partition], at `seed`."""
    tables = {"data": cfg["data"], "partition": {**cfg["partition"], "seed": seed}, **study_fields(cfg)["rounds"]}
    fc = FederatedRunConfig.from_dict(tables, defaults=FederatedRunConfig())
    return dataclasses.replace(fc, federate=dataclasses.replace(fc.federate, seed=seed, device=device))


def run(cfg: dict[str, Any], seed: int, out: Path, device: str) -> Iterator[dict[str, Any]]:
    study, rc, fed_cfg = study_fields(cfg), run_config(cfg, seed, device), rounds_config(cfg, seed, device)
    path = out / "stage_seconds.json"
    seconds = read_seconds(path)
    teachers_dir, t_report, spent = teachers(rc, out)
    if spent:
        seconds["train_teachers"] = seconds.get("train_teachers", 0.0) + spent
    save_json(seconds, path)
    train, test = splits(rc.data)
    store = out / "synthetic.h5"
    timed(seconds, "synthesize", (out / "synthesis.json").is_file(), lambda: save_json(
        synthesize(teachers_dir, store, rc.synthesis, resume=True, progress=False), out / "synthesis.json"))
    save_json(seconds, path)
    timed(seconds, "train_student", finished_student(out / "student", rc.student) is not None,
          lambda: train_student(store, out / "student", rc.student, teachers_dir=teachers_dir, test=test,
                                progress=False))
    save_json(seconds, path)
    soft = dataclasses.replace(rc.student, kd_source="soft-labels")  # the teachers out of the student's step
    timed(seconds, "train_student_soft_labels", finished_student(out / "student-soft-labels", soft) is not None,
          lambda: train_student(store, out / "student-soft-labels", soft, test=test, progress=False))
    save_json(seconds, path)
    rounds = out / "rounds"
    timed(seconds, "federate", (rounds / "report.json").is_file(), lambda: federate(
        fed_cfg, rounds, resume=(rounds / "checkpoint.pt").exists(), progress=False, train=train, test=test))
    save_json(seconds, path)
    s_report = json.loads((out / "student" / "report.json").read_text())
    soft_report = json.loads((out / "student-soft-labels" / "report.json").read_text())
    f_report = json.loads((rounds / "report.json").read_text())
    ran = {"train_teachers": load_checkpoint(teachers_dir / "node-0.pt").extra["ran_on"]["precision"],
           "synthesize": json.loads((out / "synthesis.json").read_text())["ran_on"]["precision"],
           "train_student": s_report["ran_on"]["precision"], "federate": f_report["ran_on"]["precision"]}
    yield {"threads": torch.get_num_threads(), "precision_ran": ran,
           "stage_seconds": {k: seconds[k] for k in STAGES}, "total_seconds": sum(seconds[k] for k in STAGES),
           "ensemble_accuracy": t_report["ensemble_accuracy"], "fedavg_one_shot_accuracy": t_report["fedavg_accuracy"],
           "student_accuracy": s_report["test_accuracy"], "federate_accuracy": f_report["final_accuracy"],
           "student_soft_labels_accuracy": soft_report["test_accuracy"],
           "student_soft_labels_seconds": seconds["train_student_soft_labels"],
           **ceilings(rc, fed_cfg, study, teachers_dir, store, out / "ceilings", train)}


REPEATS = 3  # every speed below is the best of this many timings (this machine's speed varies by up to 30%)


def repeat(fn: Callable[[], Any], times: int) -> None:
    for _ in range(times):
        fn()


def best_seconds(fn: Callable[[], float | None]) -> float:
    """The least of REPEATS timings of fn(); fn returns its own measured seconds, or None to be wall-timed."""
    times = []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        own = fn()
        times.append(own if own is not None else time.perf_counter() - t0)
    return min(times)


def bare_rate(model: torch.nn.Module, objective: Callable[..., dict], batch: int, steps: int,
              amp: torch.dtype | None, dev: torch.device, image_shape: tuple[int, ...], classes: int) -> float:
    """images/s of `steps` bare steps: objective(model, x, y) on fixed in-memory tensors, backward, SGD
    (after 5 warm-up steps: the allocator and oneDNN settle)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, *image_shape, generator=gen).to(dev)
    y = torch.randint(0, classes, (batch,), generator=gen).to(dev)
    stepper = Stepper(torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9), dev, amp)

    def step() -> None:
        with stepper.autocast():
            loss = objective(model, x, y)["loss"]
        stepper.step(loss)
        loss.item()  # as the stage's loop reads it

    repeat(step, 5)
    return batch * steps / best_seconds(lambda: repeat(step, steps))


def ms_per_call(fn: Callable[[], Any], calls: int) -> float:
    repeat(fn, 5)
    return 1000 * best_seconds(lambda: repeat(fn, calls)) / calls


def ceilings(rc, fed_cfg: FederatedRunConfig, study: dict[str, Any], teachers_dir: Path, store: Path, out: Path,
             train) -> dict[str, Any]:
    """Each training stage's images/s on real data against its bare ceiling, and the teachers' share."""
    shutil.rmtree(out, ignore_errors=True)
    dev = resolve_device(rc.student.device)
    info, k = train.info, train.info.num_classes
    data = train.subset(torch.arange(min(study["ceiling_images"], len(train))))
    out_ = {}

    def rates(stage_seconds: Callable[[], float], images: int, model: torch.nn.Module, objective: Callable,
              batch: int, amp: torch.dtype | None) -> dict[str, float]:
        stage = images / best_seconds(stage_seconds)
        ceiling = bare_rate(model, objective, batch, math.ceil(images / batch), amp, dev, info.image_shape, k)
        return {"stage_images_per_s": stage, "ceiling_images_per_s": ceiling, "fraction": stage / ceiling}

    # teachers: one epoch of train_node (its loop: batches, augmentation, steps, progress saving)
    tcfg = dataclasses.replace(rc.teachers, epochs=1)
    probe = data.subset(torch.arange(min(256, len(data))))

    def teacher_epoch() -> float:
        shutil.rmtree(out / "teacher", ignore_errors=True)
        return train_node(0, data, probe, tcfg, out / "teacher", progress=False).metrics["train_seconds"]

    out_["teachers"] = rates(teacher_epoch, len(data), place(initial_model(tcfg, info, 0), dev),
                             classification_objective, tcfg.batch_size, resolve_precision(tcfg.precision, dev))

    # student: one epoch of train_student on the store (HDF5 reads, augmentation, the teachers, KD)
    scfg = dataclasses.replace(rc.student, epochs=1)
    amp = resolve_precision(scfg.precision, dev)
    ensemble = load_ensemble(teachers_dir, dev)
    store_images = int(json.loads((out.parent / "synthesis.json").read_text())["n_valid"])

    def student_epoch() -> float:
        shutil.rmtree(out / "student", ignore_errors=True)
        return train_student(store, out / "student", scfg, teachers_dir=teachers_dir,
                             progress=False)["history"][0]["seconds"]

    def with_teachers(model, x, y):
        return student_objective(model, x, y, ensemble.ensemble_log_probs(x), scfg)

    student = place(seeded_model(scfg.model, info, scfg.seed, Stream.STUDENT_INIT), dev)
    out_["student"] = rates(student_epoch, store_images, student, with_teachers, scfg.batch_size, amp)
    out_["teachers_share"] = teachers_share(ensemble, student, scfg, amp, dev, info, study["share_batches"])
    legacy = seeded_model(scfg.model, info, scfg.seed, Stream.STUDENT_INIT).to(dev)  # fedinv 0.2: NCHW, fp32
    out_["teachers_share_fp32_nchw_student"] = teachers_share(ensemble, legacy, scfg, None, dev, info,
                                                              study["share_batches"])

    # local training: one FedAvg node update on the same images
    fed = Federation(fed_cfg, info)
    global_state, _ = fed.initial_states()
    fc = fed_cfg.federate
    counts = torch.tensor(data.label_counts())
    out_["local_training"] = rates(lambda: repeat(lambda: fed.node_update(0, 0, data, counts, global_state, {}, {}), 1),
                                   len(data) * fc.local_epochs, place(fed.algo.build(), dev),
                                   classification_objective, fc.batch_size, fed.amp_dtype)
    shutil.rmtree(out, ignore_errors=True)
    return out_


def teachers_share(ensemble, student: torch.nn.Module, scfg, amp: torch.dtype | None, dev: torch.device, info,
                   calls: int) -> dict[str, float]:
    """ms of the teachers' forward and of the student's own step (forward, KD, backward, SGD) on one batch,
    and the teachers' share of their sum (a student step with KD from the teachers)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(scfg.batch_size, *info.image_shape, generator=gen).to(dev)
    y = torch.randint(0, info.num_classes, (scfg.batch_size,), generator=gen).to(dev)
    stepper = Stepper(torch.optim.SGD(student.parameters(), lr=1e-3, momentum=0.9), dev, amp)
    with stepper.autocast():
        targets = ensemble.ensemble_log_probs(x)

    def teach() -> None:
        with stepper.autocast():
            ensemble.ensemble_log_probs(x)

    def learn() -> None:
        with stepper.autocast():
            loss = student_objective(student, x, y, targets, scfg)["loss"]
        stepper.step(loss)
        loss.item()

    t, s = ms_per_call(teach, calls), ms_per_call(learn, calls)
    return {"teachers_ms": t, "student_ms": s, "share": t / (t + s)}


# --- tables -------------------------------------------------------------------------------------------

def by_variant(records: list[dict], variant: str) -> list[dict]:
    """The variant's latest record per seed (a measurement made again replaces the one before), by seed."""
    return sorted((r for r in latest(records) if r["variant"] == variant), key=lambda r: r["seed"])


def pipeline(records: list[dict]) -> Table:
    """Per variant and seed: the stages' wall seconds and the precision they ran at; per seed, fp32 / auto."""
    rows, records = [], latest(records)
    for r in sorted(records, key=lambda r: (r["seed"], r["variant"] != "fp32")):
        s = r["stage_seconds"]
        ran = "/".join(sorted(set(r["precision_ran"].values())))
        rows.append([r["seed"], r["variant"], ran, r["threads"], *(f"{s[k]:.0f}" for k in STAGES),
                     f"{r['total_seconds']:.0f}"])
    for seed in sorted({r["seed"] for r in records}):
        pair = {r["variant"]: r for r in records if r["seed"] == seed}
        if {"fp32", "auto"} <= set(pair):
            a, b = pair["fp32"], pair["auto"]
            rows.append([seed, "fp32 / auto", "", "", *(f"{a['stage_seconds'][k] / b['stage_seconds'][k]:.2f}x"
                                                        for k in STAGES),
                         f"{a['total_seconds'] / b['total_seconds']:.2f}x"])
    return Table(["seed", "variant", "ran", "threads", "teachers s", "synthesis s", "student s", "FedAvg 10 rounds s",
                  "total s"], rows,
                 "make demo's pipeline (teachers, fast synthesis, student) and 10 FedAvg rounds on the same setting, "
                 "wall seconds per stage. threads 2: alone on the machine; threads 1: two runs side by side, one "
                 "core each.")


def accuracy(records: list[dict]) -> Table:
    rows = []
    for variant in ("fp32", "auto"):
        rs = by_variant(records, variant)
        if rs:
            rows.append([variant, len(rs), *(mean_std(r.get(k) for r in rs) for k in
                                             ("ensemble_accuracy", "fedavg_one_shot_accuracy", "student_accuracy",
                                              "student_soft_labels_accuracy", "federate_accuracy"))])
    return Table(["variant", "seeds", "teachers' ensemble", "one-shot FedAvg", "student",
                  "student on the soft labels", "FedAvg, 10 rounds"], rows,
                 "test accuracy %, mean ± std over the seeds; the student on the soft labels: the same store, KD "
                 "targets the ensemble's stored for each image (kd_source soft-labels), no teachers in its step.")


def ceiling_table(records: list[dict]) -> Table:
    """Per variant and thread count: each training stage's images/s against its ceiling, the teachers' share."""
    rows = []
    for variant in ("fp32", "auto"):
        for threads in (2, 1):
            rs = [r for r in by_variant(records, variant) if r["threads"] == threads]
            if not rs:
                continue
            cells = []
            for stage in ("teachers", "student", "local_training"):
                cells += [f"{mean(r[stage]['stage_images_per_s'] for r in rs):.0f} / "
                          f"{mean(r[stage]['ceiling_images_per_s'] for r in rs):.0f}",
                          f"{mean(r[stage]['fraction'] for r in rs):.2f}"]
            shares = (mean(r[key]["share"] for r in rs)
                      for key in ("teachers_share", "teachers_share_fp32_nchw_student"))
            rows.append([variant, threads, len(rs), *cells, *(pct(share, 0) + "%" for share in shares)])
    return Table(["variant", "threads", "seeds", "teachers img/s (stage / ceiling)", "fraction", "student img/s",
                  "fraction", "local training img/s", "fraction", "teachers' share of a student step",
                  "the same, fp32, student NCHW (fedinv 0.2)"], rows,
                 "stage: the stage's own loop on 8,192 real images (student: one epoch of the 16,384-image store); "
                 "ceiling: the same model's forward + backward + SGD step on in-memory tensors, same precision and "
                 "batch (the student's with the teachers' forward); each the best of 3 timings; mean over the seeds.")


def summary(records: list[dict]) -> Table:
    """fp32 beside auto: stage seconds of the runs alone on the machine (2 threads), accuracy over every seed,
    the teachers' share of a student step."""
    fp32, auto = by_variant(records, "fp32"), by_variant(records, "auto")
    alone = {v: [r for r in by_variant(records, v) if r["threads"] > 1] for v in ("fp32", "auto")}
    ran = "/".join(sorted({p for r in auto for p in r["precision_ran"].values()})) or "-"
    rows = []
    oneshot = STAGES[:3]
    parts = {**{k: (k,) for k in STAGES}, "oneshot": oneshot, "total": STAGES}
    for key, label in (*((k, f"{STAGE_LABELS[k]}, s") for k in STAGES),
                       ("oneshot", "one-shot pipeline (make demo's stages), s"), ("total", "all four stages, s")):
        a, b = (mean(sum(r["stage_seconds"][k] for k in parts[key]) for r in alone[v]) for v in ("fp32", "auto"))
        rows.append([label, number(a, 0), number(b, 0), f"{a / b:.2f}x" if a and b else "-"])
    for key, label in (("ensemble_accuracy", "teachers' ensemble, %"), ("student_accuracy", "student, %"),
                       ("federate_accuracy", "FedAvg after 10 rounds, %")):
        rows.append([label, mean_std(r[key] for r in fp32), mean_std(r[key] for r in auto), ""])
    cells = []
    for v, rs in (("fp32", fp32), ("auto", auto)):
        sec = mean(r.get("student_soft_labels_seconds") for r in alone[v])
        cells.append(f"{mean_std(r.get('student_soft_labels_accuracy') for r in rs)} ({number(sec, 0)} s)")
    rows.append(["student on the store's soft labels (no teachers in its step), % (s)", *cells, ""])
    share = [mean(r["teachers_share"]["share"] for r in rs) for rs in (fp32, auto)]
    rows.append(["teachers' share of a student step", *(pct(s, 0) + "%" if s is not None else "-" for s in share), ""])
    seeds = sorted({r["seed"] for r in fp32} & {r["seed"] for r in auto})
    return Table(["", "fp32", f"auto ({ran} here)", "fp32 / auto"], rows,
                 f"seconds: the runs alone on the machine (2 threads); accuracy: mean ± std over seeds "
                 f"{', '.join(map(str, seeds))}.")


TABLES = {"summary": summary, "pipeline": pipeline, "accuracy": accuracy, "ceilings": ceiling_table}


def headline(records: list[dict]) -> str:
    pairs = [(a, b) for a in by_variant(records, "fp32") for b in by_variant(records, "auto") if a["seed"] == b["seed"]]
    if not pairs:
        return ""
    ratios = [a["total_seconds"] / b["total_seconds"] for a, b in pairs]
    fp32, auto = by_variant(records, "fp32"), by_variant(records, "auto")
    student = {v: mean_std(r["student_accuracy"] for r in rs) for v, rs in (("fp32", fp32), ("auto", auto))}
    return (f"--precision auto (bf16 here) runs the pipeline {mean(ratios):.2f}x as fast as fp32 ({len(pairs)} seeds); "
            f"student {student['auto']}% vs {student['fp32']}%")
