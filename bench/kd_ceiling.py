"""Benchmark: the one-shot student's ceiling, KD from the same teachers on real (unlabelled) images.

The student of the one-shot pipeline learns the teachers' class-level ensemble on synthetic
images. Training the same student, with the same recipe (KD at the config's temperature against
the ensemble on each augmented batch, same epochs and batch), on as many real Fashion-MNIST
training images tells the two gaps apart: ensemble - ceiling is what the KD recipe and the
student's capacity lose; ceiling - synthetic student is what the synthetic images lose. The real
images' labels are never read: the store's target labels are the ensemble's argmax.

    python bench/kd_ceiling.py --teachers runs/oneshot/alpha-0.5-nodes-5-seed-0/teachers \
        --runs 8192x40,32768x10 --json-out docs/bench-kd-ceiling.jsonl

Prints (and appends to --json-out) one JSON line per IMAGESxEPOCHS: images, epochs, seed,
student_accuracy, ensemble_accuracy, fedavg_accuracy, seconds, teachers, config. Resumes: a
finished student is read back, a stopped one continues from its last epoch.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
import torch
from bench.records import emit

from fedinv import __version__
from fedinv.config import apply_overrides, from_dict, to_dict
from fedinv.data.batches import normalize
from fedinv.data.datasets import ImageTensors, load_dataset
from fedinv.errors import RunStateError
from fedinv.oneshot.pipeline import RunConfig
from fedinv.oneshot.student.config import StudentConfig
from fedinv.oneshot.student.report import finished_student
from fedinv.oneshot.student.train import train_student
from fedinv.oneshot.synthesis.ensemble import load_ensemble
from fedinv.oneshot.teacher_files import Teachers, as_teachers
from fedinv.runtime import atomic_path, resolve_device, rng
from fedinv.store import StoreWriter, read_meta, store_meta

CONFIG = Path(__file__).parent.parent / "assets" / "configs" / "fmnist-dirichlet-0.5.toml"  # data and student
REAL_DRAW = 100  # the random stream of the image draw (a number no library stream uses)


def real_store(path: Path, teachers: Teachers, train: ImageTensors, n: int, seed: int, device: torch.device,
               batch: int = 512) -> None:
    """A store of n training images drawn at random (seeded), labelled by the ensemble's argmax, with
    the ensemble's log-probabilities as soft labels, recording the teachers' hashes as every store
    does; written once (under its name only when complete). One made from other teachers is refused."""
    meta = store_meta(train.info, seed=seed, config={"source": "real training images", "images": n, "seed": seed},
                      teachers=teachers.hashes())
    if path.is_file():
        if read_meta(path)["teachers"] != meta["teachers"]:
            raise click.UsageError(f"{path} was made from other teachers; choose another --out")
        return
    rows = torch.randperm(len(train.labels), generator=rng(seed, REAL_DRAW))[:n]
    ens = load_ensemble(teachers, device)
    with atomic_path(path) as tmp:
        tmp.unlink()  # the writer creates the file
        with StoreWriter(tmp, meta) as w:
            for i in range(0, n, batch):
                u8 = train.images[rows[i:i + batch]]
                logp = ens.ensemble_log_probs(normalize(u8.to(device), train.info))
                w.append(u8, logp.argmax(1).cpu(), logp.cpu(), torch.full((len(u8), 2), -1, dtype=torch.int32))


@click.command()
@click.option("--teachers", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="teachers folder (its report.json gives the ensemble and FedAvg accuracies)")
@click.option("--runs", default="8192x40,32768x10", show_default=True,
              help="IMAGESxEPOCHS pairs: real images in the store, student epochs over them")
@click.option("--config", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=CONFIG,
              show_default=True, help="run config whose [data] and [student] tables are used")
@click.option("--seed", default=0, show_default=True, help="seed of the image draw and the student")
@click.option("--set", "overrides", multiple=True, metavar="student.FIELD=VALUE",
              help="a student field over the config's (repeatable)")
@click.option("--out", default="runs/kd-ceiling", show_default=True, type=click.Path(path_type=Path),
              help="stores and students go here")
@click.option("--json-out", type=click.Path(dir_okay=False), default=None, help="append each JSON line here")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps")
def main(teachers, runs, config, seed, overrides, out, json_out, device):
    try:
        pairs = [tuple(int(v) for v in r.split("x")) for r in runs.split(",")]
        assert all(len(p) == 2 and min(p) > 0 for p in pairs)
    except (ValueError, AssertionError):
        raise click.BadParameter(f"expected IMAGESxEPOCHS pairs such as 8192x40, got {runs!r}", param_hint="--runs")
    base = RunConfig.from_toml(config)
    if any(not o.startswith("student.") for o in overrides):
        raise click.BadParameter("only student fields can be set: student.FIELD=VALUE", param_hint="--set")
    fields = apply_overrides({"student": to_dict(base.student)}, overrides)["student"]
    train, test = load_dataset(base.data, "train"), load_dataset(base.data, "test")
    if max(n for n, _ in pairs) > len(train.labels):
        raise click.BadParameter(f"the training split holds {len(train.labels)} images", param_hint="--runs")
    report = json.loads((teachers / "report.json").read_text())
    dev, loaded = resolve_device(device), as_teachers(teachers)
    for n, epochs in pairs:
        store = out / f"real-{n}-seed-{seed}.h5"
        real_store(store, loaded, train, n, seed, dev)
        cfg = from_dict(StudentConfig, {**fields, "epochs": epochs, "seed": seed, "device": device})
        folder = out / f"student-{n}x{epochs}-seed-{seed}"
        try:
            result = finished_student(folder, cfg)
        except RunStateError as e:
            raise click.UsageError(f"{e} (another --out)") from e
        if result is None:
            result = train_student(store, folder, cfg, teachers_dir=teachers, test=test, progress=False)
        seconds = sum(h["seconds"] for h in result["history"])  # the epochs' own time, across resumes
        emit({"images": n, "epochs": epochs, "seed": seed, "student_accuracy": result["test_accuracy"],
              "ensemble_accuracy": report["ensemble_accuracy"], "fedavg_accuracy": report["fedavg_accuracy"],
              "seconds": seconds, "teachers": str(teachers), "config": to_dict(cfg),
              "fedinv_version": __version__}, json_out)


if __name__ == "__main__":
    main()
