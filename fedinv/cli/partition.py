"""`fedinv partition` and `fedinv models`."""

from __future__ import annotations

from pathlib import Path

import click

from ..config import DataConfig, PartitionConfig, click_options, pick
from ..data.datasets import load_dataset
from ..data.partition import make_partition, save_partition
from ..models import MODELS


@click.command("partition")
@click_options(DataConfig)
@click_options(PartitionConfig)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="manifest to write (JSON); a PNG of label counts per node is written beside it")
def partition_cmd(out: Path, **kwargs) -> None:
    """Split a dataset's training set over nodes and write the manifest every later stage reads."""
    data_cfg, part_cfg = pick(DataConfig, kwargs), pick(PartitionConfig, kwargs)
    train = load_dataset(data_cfg, "train")
    part = make_partition(train.labels.numpy(), train.info.num_classes, part_cfg, data_cfg)
    manifest = save_partition(part, train.labels.numpy(), out, train.info.class_names)
    click.echo(f"{out}: {part.num_nodes} nodes, sizes {manifest['node_sizes']}; "
               f"label counts in {out.with_suffix('.png')}")


@click.command("models")
def models_cmd() -> None:
    """List the models of the registry; those marked BN carry BatchNorm statistics (teachers for
    inversion), the others (GroupNorm, no normalization) serve multi-round runs and students."""
    for spec in MODELS.values():
        click.echo(f"{spec.name:12s} {'BN' if spec.batchnorm else '--'}  {spec.summary}")
