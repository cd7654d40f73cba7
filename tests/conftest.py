import numpy as np
import pytest
import torch

from fedinv.config import DataConfig, PartitionConfig
from fedinv.data.datasets import load_dataset
from fedinv.data.partition import make_partition, save_partition
from fedinv.oneshot.teachers import TeacherConfig

TINY = DataConfig(dataset="synthetic-tiny")


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_train():
    return load_dataset(TINY, "train")


@pytest.fixture
def tiny_partition(tmp_path, tiny_train):
    """A 3-node Dirichlet split of synthetic-tiny, saved as a manifest."""
    labels = tiny_train.labels.numpy()
    part = make_partition(labels, 10, PartitionConfig(num_nodes=3, alpha=1.0, seed=0), TINY)
    path = tmp_path / "partition.json"
    save_partition(part, labels, path, tiny_train.info.class_names)
    return path


def tiny_teacher_config(**kw) -> TeacherConfig:
    base = dict(model="lenet5", epochs=2, batch_size=32, lr=0.05, device="cpu")
    base.update(kw)
    return TeacherConfig(**base)


def labels_with_classes(n: int, classes: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, classes, n)


def model_dict(name: str, channels: int, classes: int, size: int) -> dict:
    """A checkpoint's `model` entry written by hand (to build inconsistent checkpoints on purpose)."""
    return {"name": name, "in_channels": channels, "num_classes": classes, "image_size": size}
