"""`fedinv train-teachers`."""

from __future__ import annotations

from pathlib import Path

import click

from ..config import click_options, pick
from ..data.partition import load_partition
from ..errors import ConfigError
from ..oneshot.teachers import TeacherConfig, train_teachers
from ..runtime import to_json
from .engines import engine_option, flower_module
from .parsing import parse_numbers, progress_option, tensorboard_option, trust_model_option


@click.command("train-teachers")
@click.option("--partition", "partition_path", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="partition manifest written by `fedinv partition`")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="teachers folder: node-K.pt per node, report.json, partial/ epoch checkpoints")
@click.option("--nodes", default=None, help="train only these nodes, e.g. 0,3 or 0-2 (default: all); in a real "
              "deployment each node trains its own and sends node-K.pt")
@engine_option("each node trains in a Flower ClientApp (simulation engine) and the ServerApp collects the "
               "teachers (all nodes, no resume)")
@progress_option()
@tensorboard_option
@trust_model_option
@click_options(TeacherConfig)
def train_teachers_cmd(partition_path: Path, out: Path, nodes: str | None, engine: str, progress: bool,
                       tensorboard: bool, trust: tuple[str, ...], **kwargs) -> None:
    """Train one teacher per node on its split of the partition.

    Resumable: rerun the same command after an interruption; finished nodes are skipped and a
    partly trained node continues from its last epoch. Writes OUT/report.json with per-node,
    teacher-ensemble and one-shot FedAvg test accuracy.
    """
    cfg = pick(TeacherConfig, kwargs)
    if engine == "flower":
        if nodes:
            raise ConfigError("--nodes works with the in-process engine only; the Flower engine trains every node")
        if tensorboard or trust:
            raise ConfigError(f"{'--tensorboard' if tensorboard else '--trust-model'} works with the in-process "
                              f"engine only")
        report = flower_module("teacher_upload").train_teachers_flower(load_partition(partition_path), cfg, out)
    else:
        report = train_teachers(load_partition(partition_path), cfg, out, nodes=parse_numbers(nodes, "--nodes"),
                                progress=progress, tensorboard=tensorboard, trust=trust)
    summary = {k: report[k] for k in ("node_accuracy", "ensemble_accuracy", "ensemble_mean_accuracy",
                                      "fedavg_accuracy")}
    click.echo(to_json(summary, indent=2))
