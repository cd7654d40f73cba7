"""`fedinv train-student` and `fedinv evaluate`."""

from __future__ import annotations

from pathlib import Path

import click

from ..checkpoint import MODEL_KINDS, load_checkpoint
from ..config import COUNT, DataConfig, click_options, pick
from ..data.datasets import load_dataset
from ..data.partition import load_partition
from ..errors import ConfigError
from ..evaluate import evaluate_checkpoint
from ..oneshot.student.config import StudentConfig
from ..oneshot.student.train import train_student
from ..runtime import resolve_device, save_json, save_png, to_json
from ..store import read_meta
from .parsing import check_option, progress_option, tensorboard_option, trust_model_option


@click.command("train-student")
@click.option("--store", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="synthetic HDF5 store (from `fedinv synthesize`)")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="folder for student.pt, report.json and the epoch checkpoint partial.pt")
@click.option("--teachers", "teachers_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="teachers folder: KD targets from the teachers on each augmented batch, and needed for "
                   "adaptive mode; without it the stored soft labels are the targets")
@click.option("--data-root", default="data", show_default=True, help="where the test set (and local data) live")
@click.option("--test/--no-test", default=True, show_default=True,
              help="evaluate on the dataset's test split during and after training")
@click.option("--eval-every", default=10, show_default=True,
              help="test accuracy every N epochs (and after the last), N >= 1")
@click.option("--local-partition", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="partition manifest, to mix in one node's real data (with --local-node, --local-weight)")
@click.option("--local-node", type=int, default=None, help="the node whose real data the student holds")
@progress_option()
@tensorboard_option
@trust_model_option
@click_options(StudentConfig)
def train_student_cmd(store: Path, out: Path, teachers_dir: Path | None, data_root: str, test: bool,
                      eval_every: int, local_partition: Path | None, local_node: int | None, progress: bool,
                      tensorboard: bool, trust: tuple[str, ...], **kwargs) -> None:
    """Train a student on a synthetic store by distillation from the teacher ensemble.

    Reads the store in shuffled blocks (memory does not grow with its size). Resumable: rerun
    after an interruption to continue from the last epoch. With --adaptive-batches N, N new
    batches are synthesized against the current student every epoch and appended to the store.
    """
    cfg = pick(StudentConfig, kwargs)
    check_option("--eval-every", eval_every, COUNT)
    meta = read_meta(store)
    data_cfg = DataConfig(dataset=meta["dataset"]["name"], data_root=data_root, image_size=meta["image_shape"][1])
    local = None
    if local_partition is not None or local_node is not None:
        if local_partition is None or local_node is None:
            raise ConfigError("--local-partition and --local-node go together")
        part = load_partition(local_partition)
        if not 0 <= local_node < part.num_nodes:
            raise ConfigError(f"--local-node {local_node} out of range 0..{part.num_nodes - 1}")
        local = load_dataset(part.data, "train").subset(part.indices[local_node])
    test_data = load_dataset(data_cfg, "test") if test else None
    report = train_student(store, out, cfg, teachers_dir=teachers_dir, local=local, test=test_data,
                           eval_every=eval_every, progress=progress, trust=trust,
                           tensorboard=tensorboard)
    keys = ("test_accuracy", "ensemble_accuracy", "fedavg_accuracy", "store_images")
    if report:  # under torchrun, rank 0 alone reports (the other ranks return nothing)
        click.echo(to_json({k: report.get(k) for k in keys}, indent=2))


@click.command("evaluate")
@click.argument("checkpoint", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="JSON report to write; a confusion-matrix PNG is written beside it")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps")
@click.option("--dataset", default=None, help="test set to evaluate on (default: the dataset the checkpoint "
              "records; fashion-mnist for a checkpoint that records none)")
@click_options(DataConfig, exclude=("dataset",))
@trust_model_option
def evaluate_cmd(checkpoint: Path, out: Path | None, device: str, dataset: str | None, trust: tuple[str, ...],
                 **kwargs) -> None:
    """Accuracy, per-class accuracy and confusion matrix of a teacher, student or global-model
    CHECKPOINT on a test set: --dataset when given, else the dataset the checkpoint records."""
    ckpt = load_checkpoint(checkpoint, kind=MODEL_KINDS, trust=trust)
    recorded = ckpt.dataset_info.name if ckpt.dataset_info is not None else None
    kwargs["dataset"] = dataset or recorded or DataConfig().dataset
    data_cfg = pick(DataConfig, kwargs)
    test = load_dataset(data_cfg, "test")
    report, picture = evaluate_checkpoint(ckpt, test, resolve_device(device))
    report["checkpoint"] = str(checkpoint)
    if out is not None:
        save_json(report, out)
        save_png(picture, out.with_suffix(".png"))
    click.echo(to_json({k: report[k] for k in ("accuracy", "per_class_accuracy")}, indent=2))
