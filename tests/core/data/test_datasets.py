"""Tests of fedinv.data.datasets."""

import gzip

import numpy as np
import pytest
import torch
from PIL import Image

from fedinv.config import DataConfig
from fedinv.data import datasets
from fedinv.data.batches import batches, denormalize, normalize, random_crop_flip
from fedinv.data.datasets import load_dataset
from fedinv.errors import ConfigError, DatasetNotFoundError


def write_idx(path, array: np.ndarray):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_synthetic_tiny_is_deterministic_and_knows_its_facts():
    a, b = load_dataset("synthetic-tiny"), load_dataset("synthetic-tiny")
    assert a.images.shape == (1000, 3, 16, 16) and a.images.dtype == torch.uint8
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert a.info.num_classes == 10 and a.info.image_shape == (3, 16, 16)
    assert len(a.info.class_names) == 10 and len(a.info.mean) == 3
    assert len(load_dataset("synthetic-tiny", "test")) == 200


def test_unknown_dataset_and_split():
    with pytest.raises(ConfigError, match="unknown dataset 'imagenet'; known: cifar10, cifar100, fashion-mnist"):
        load_dataset("imagenet")
    with pytest.raises(ConfigError, match="unknown split 'val'; known: test, train"):
        load_dataset("synthetic-tiny", "val")


def test_fashion_mnist_from_idx_files(tmp_path, monkeypatch):
    folder = tmp_path / "debian"
    folder.mkdir()
    images = np.random.default_rng(0).integers(0, 256, (7, 28, 28))
    write_idx(folder / "t10k-images-idx3-ubyte.gz", images)
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.arange(7))
    monkeypatch.setattr(datasets, "DEBIAN_FASHION_MNIST", folder)
    monkeypatch.setitem(datasets._LOADERS, "fashion-mnist",
                        lambda cfg, split: datasets._load_mnist_like(cfg, split, "FashionMNIST", folder))
    test = load_dataset(DataConfig(dataset="fashion-mnist", data_root=str(tmp_path / "none")), "test")
    assert test.images.shape == (7, 1, 28, 28)
    assert (test.images[:, 0].numpy() == images).all() and test.labels.tolist() == list(range(7))
    assert test.info.class_names[0] == "T-shirt/top"


def test_missing_dataset_offline_says_how_to_get_it(tmp_path):
    cfg = DataConfig(dataset="mnist", data_root=str(tmp_path))
    with pytest.raises(DatasetNotFoundError, match="pass --download"):
        load_dataset(cfg)
    with pytest.raises(DatasetNotFoundError, match="Pass --download"):
        load_dataset(DataConfig(dataset="cifar10", data_root=str(tmp_path)))


def test_missing_fashion_mnist_names_the_debian_package(tmp_path):
    missing = tmp_path / "no-debian"
    loader = lambda cfg, split: datasets._load_mnist_like(cfg, split, "FashionMNIST", missing)  # noqa: E731
    with pytest.raises(DatasetNotFoundError, match="apt-get install dataset-fashion-mnist"):
        loader(DataConfig(data_root=str(tmp_path)), "train")


def test_imagefolder(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 4), ("test", 2)):
        for cls in ("cat", "dog"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(tmp_path / split / cls / f"{i}.png")
    cfg = DataConfig(dataset="imagefolder", data_root=str(tmp_path), image_size=12)
    train, test = load_dataset(cfg, "train"), load_dataset(cfg, "test")
    assert train.images.shape == (8, 3, 12, 12) and test.images.shape == (4, 3, 12, 12)
    assert train.info.class_names == ("cat", "dog") and train.labels.tolist() == [0] * 4 + [1] * 4
    assert train.info.mean == test.info.mean  # test reuses the training statistics
    with pytest.raises(DatasetNotFoundError, match="no 'train' folder"):
        load_dataset(DataConfig(dataset="imagefolder", data_root=str(tmp_path / "x")))


def test_batches_cover_the_data_once_and_are_seeded(tiny_train):
    def epoch(seed):
        g = torch.Generator().manual_seed(seed)
        return list(batches(tiny_train, 64, device=torch.device("cpu"), generator=g, shuffle=True, augment=True))
    a, b = epoch(1), epoch(1)
    assert sum(len(y) for _, y in a) == len(tiny_train)
    assert sorted(torch.cat([y for _, y in a]).tolist()) == sorted(tiny_train.labels.tolist())
    assert all(torch.equal(x1, x2) for (x1, _), (x2, _) in zip(a, b))
    assert not torch.equal(a[0][0], epoch(2)[0][0])


def test_crop_shifts_and_flip():
    x = torch.arange(16.0).view(1, 1, 4, 4).repeat(64, 1, 1, 1)
    out = random_crop_flip(x, pad=1, flip=True, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    # every output row is a (possibly flipped, shifted, zero-padded) piece of the input
    assert len({tuple(o.flatten().tolist()) for o in out}) > 8
    assert torch.equal(random_crop_flip(x, 0, False, torch.Generator()), x)


def test_normalize_round_trip(tiny_train):
    x = tiny_train.images[:8]
    back = denormalize(normalize(x, tiny_train.info), tiny_train.info)
    torch.testing.assert_close(back, x.float() / 255, atol=1e-6, rtol=0)
