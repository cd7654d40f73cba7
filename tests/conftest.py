"""Fixtures every test module may use: two CPU threads, synthetic-tiny's training split, a 3-node
partition of it. Shared helpers (tiny teachers, configs, runs) live in tests/helpers.py."""

import pytest
import torch

from fedinv.config import PartitionConfig
from fedinv.data.datasets import load_dataset
from fedinv.data.partition import make_partition, save_partition
from tests.helpers import TINY_DATA


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_train():
    return load_dataset(TINY_DATA, "train")


@pytest.fixture
def tiny_partition(tmp_path, tiny_train):
    """A 3-node Dirichlet split of synthetic-tiny, saved as a manifest."""
    labels = tiny_train.labels.numpy()
    part = make_partition(labels, 10, PartitionConfig(num_nodes=3, alpha=1.0, seed=0), TINY_DATA)
    path = tmp_path / "partition.json"
    save_partition(part, labels, path, tiny_train.info.class_names)
    return path
