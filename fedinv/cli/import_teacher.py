"""`fedinv import-teacher`."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from ..data.datasets import DATASETS, dataset_info
from ..errors import ConfigError
from ..models import is_factory
from ..oneshot.teacher_files import import_teacher
from .parsing import parse_floats


@click.command("import-teacher")
@click.option("--model", required=True, metavar="NAME|MODULE:FACTORY",
              help="a registry model (`fedinv models`), or a Python factory `module:function` that returns "
                   "the classifier; it is called with those of in_channels, num_classes, image_size it takes")
@click.option("--weights", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="the model's state_dict, saved with torch.save (read weights-only)")
@click.option("--label-counts", required=True, metavar="N0,N1,...",
              help="how many training samples of each class the model saw, one number per class")
@click.option("--dataset", default="fashion-mnist", show_default=True,
              help=f"the dataset its inputs follow (shape, classes, normalization): {', '.join(DATASETS)}")
@click.option("--mean", default=None, metavar="M[,M,M]",
              help="per-channel mean of the input normalization it was trained with (default: the dataset's)")
@click.option("--std", default=None, metavar="S[,S,S]",
              help="per-channel std of the input normalization it was trained with (default: the dataset's)")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="teachers folder to add the file to (as node-K.pt)")
@click.option("--node", type=int, default=None, help="K of node-K.pt (default: the next free index)")
def import_teacher_cmd(model: str, weights: Path, label_counts: str, dataset: str, mean: str | None,
                       std: str | None, out: Path, node: int | None) -> None:
    """Bring your own teacher: turn a classifier trained elsewhere into a fedinv teacher file.

    The model gives logits for the dataset's classes and should have BatchNorm layers (synthesis
    matches their statistics; without them, synthesize with --a-bn 0). It is built, loaded
    (strict), checked on a dummy batch, and written as OUT/node-K.pt with its label counts and
    dataset facts. A MODULE:FACTORY model is Python code:
    the commands that read the file build it only with `--trust-model MODULE:FACTORY`.
    """
    info = dataset_info(dataset)
    try:
        counts = [int(c) for c in label_counts.split(",")]
    except ValueError:
        raise ConfigError(f"--label-counts {label_counts!r}: expected comma-separated integers, one per class")
    norm = {k: v for k, v in (("mean", parse_floats(mean, "--mean")), ("std", parse_floats(std, "--std"))) if v}
    for key, values in norm.items():
        if len(values) != info.channels:
            raise ConfigError(f"--{key} needs {info.channels} value(s) for {info.name}, got {len(values)}")
    if any(s <= 0 for s in norm.get("std", ())):
        raise ConfigError(f"--std must be positive, got {std}")
    path = import_teacher(model, weights, counts, dataclasses.replace(info, **norm), out, node)
    click.echo(f"{path}: {model} for {info.name}, {sum(counts)} samples; synthesize from {out}"
               + (f" with --trust-model {model}" if is_factory(model) else ""))
