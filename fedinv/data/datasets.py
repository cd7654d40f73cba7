"""Datasets by name, held in memory as uint8 tensors.

Every dataset fedinv uses is small enough to sit in memory as `uint8 [N, C, H, W]`; batches are
then cut, augmented and normalized as tensors (see `batches.py`), which on a 2-core CPU is far
faster than a per-sample PIL pipeline and moves to the GPU as one copy.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..config import DataConfig
from ..errors import DatasetNotFoundError, unknown

# Where Debian's package `dataset-fashion-mnist` installs the IDX files.
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
SPLITS = ("train", "test")


@dataclass(frozen=True)
class DatasetInfo:
    """What a model and a grid need to know about a dataset."""

    name: str
    num_classes: int
    channels: int
    image_size: int
    mean: tuple[float, ...]  # per channel, on [0, 1] pixels
    std: tuple[float, ...]
    class_names: tuple[str, ...]
    hflip: bool = True  # is a horizontal flip label-preserving? (not for digits)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.image_size, self.image_size)


@dataclass
class ImageTensors:
    """A split held in memory: `images` uint8 [N, C, H, W], `labels` int64 [N]."""

    images: torch.Tensor
    labels: torch.Tensor
    info: DatasetInfo
    split: str = "train"
    source: str = field(default="", compare=False)  # where it was read from, for reports

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"images must be uint8 [N, C, H, W], got {self.images.dtype} {tuple(self.images.shape)}")
        if len(self.images) != len(self.labels):
            raise ValueError("images and labels differ in length")

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: torch.Tensor | np.ndarray | list[int]) -> "ImageTensors":
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        return ImageTensors(self.images[idx], self.labels[idx], self.info, self.split, self.source)

    def label_counts(self) -> list[int]:
        return torch.bincount(self.labels, minlength=self.info.num_classes).tolist()


FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
DIGITS = tuple(str(i) for i in range(10))

_INFO = {
    "fashion-mnist": DatasetInfo("fashion-mnist", 10, 1, 28, (0.2860,), (0.3530,), FASHION_CLASSES),
    "mnist": DatasetInfo("mnist", 10, 1, 28, (0.1307,), (0.3081,), DIGITS, hflip=False),
    "cifar10": DatasetInfo("cifar10", 10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
                           CIFAR10_CLASSES),
    "svhn": DatasetInfo("svhn", 10, 3, 32, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970), DIGITS,
                        hflip=False),
    "synthetic-tiny": DatasetInfo("synthetic-tiny", 10, 3, 16, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25),
                                  tuple(f"class{i}" for i in range(10)), hflip=False),
}


def _read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped), the format of (Fashion-)MNIST."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _find_idx(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def _load_mnist_like(cfg: DataConfig, split: str, tv_name: str, debian: Path | None) -> ImageTensors:
    info = _INFO[cfg.dataset]
    prefix = "train" if split == "train" else "t10k"
    # torchvision's layout under data_root first, then the Debian package's folder.
    folders = [Path(cfg.data_root) / tv_name / "raw"] + ([debian] if debian else [])
    for folder in folders:
        images_path = _find_idx(folder, f"{prefix}-images-idx3-ubyte")
        labels_path = _find_idx(folder, f"{prefix}-labels-idx1-ubyte")
        if images_path and labels_path:
            images = torch.from_numpy(_read_idx(images_path).copy()).unsqueeze(1)
            labels = torch.from_numpy(_read_idx(labels_path).astype(np.int64))
            return ImageTensors(images, labels, info, split, str(folder))
    if cfg.download:
        import torchvision

        ds = getattr(torchvision.datasets, tv_name)(cfg.data_root, train=split == "train", download=True)
        return ImageTensors(ds.data.unsqueeze(1).contiguous(), ds.targets.long(), info, split, cfg.data_root)
    hint = (f"install Debian's package (apt-get install dataset-fashion-mnist, files land in {debian}), or "
            if debian else "")
    raise DatasetNotFoundError(
        f"{cfg.dataset} ({split}) not found in {' or '.join(map(str, folders))}; {hint}"
        f"pass --download to fetch it through torchvision into {cfg.data_root}")


def _load_torchvision(cfg: DataConfig, split: str) -> ImageTensors:
    import torchvision

    info = _INFO.get(cfg.dataset)
    try:
        if cfg.dataset == "svhn":
            ds = torchvision.datasets.SVHN(cfg.data_root, split=split, download=cfg.download)
            images, labels = torch.from_numpy(ds.data), torch.as_tensor(ds.labels)
        else:
            cls = torchvision.datasets.CIFAR10 if cfg.dataset == "cifar10" else torchvision.datasets.CIFAR100
            ds = cls(cfg.data_root, train=split == "train", download=cfg.download)
            images, labels = torch.from_numpy(ds.data).permute(0, 3, 1, 2), torch.as_tensor(ds.targets)
    except RuntimeError as e:  # torchvision: "Dataset not found or corrupted. You can use download=True"
        raise DatasetNotFoundError(
            f"{cfg.dataset} ({split}) not found in {cfg.data_root}: {e} Pass --download to fetch it "
            f"through torchvision (needs network access), or point --data-root at a folder holding it") from e
    if cfg.dataset == "cifar100":
        info = DatasetInfo("cifar100", 100, 3, 32, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
                           tuple(ds.classes))
    return ImageTensors(images.contiguous(), labels.long(), info, split, cfg.data_root)


def _load_imagefolder(cfg: DataConfig, split: str) -> ImageTensors:
    """A folder `data_root/{train,test}/<class>/<image>`; grayscale when every image is."""
    from PIL import Image

    root = Path(cfg.data_root)
    folder = next((root / name for name in ((split,) if split == "train" else ("test", "val"))
                   if (root / name).is_dir()), None)
    if folder is None:
        raise DatasetNotFoundError(f"imagefolder: no {split!r} folder in {root} (expected {root}/train/<class>/*.png "
                                   f"and {root}/test/<class>/*.png)")
    classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    if not classes:
        raise DatasetNotFoundError(f"imagefolder: no class folders in {root / 'train'}")
    size = cfg.image_size or 32
    exts = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}
    files = [(p, c) for c, name in enumerate(classes) if (folder / name).is_dir()
             for p in sorted((folder / name).iterdir()) if p.suffix.lower() in exts]
    if not files:
        raise DatasetNotFoundError(f"imagefolder: no images under {folder}")
    grayscale = all(_image_mode(p) in ("L", "1", "I;16") for p in (root / "train").rglob("*")
                    if p.suffix.lower() in exts)
    mode = "L" if grayscale else "RGB"
    arrays = []
    for p, _ in files:  # one file open at a time
        with Image.open(p) as im:
            arrays.append(np.asarray(im.convert(mode).resize((size, size), Image.BILINEAR)))
    images = torch.from_numpy(np.stack(arrays))
    images = images.unsqueeze(1) if mode == "L" else images.permute(0, 3, 1, 2)
    labels = torch.tensor([c for _, c in files], dtype=torch.long)
    # Normalization from the training images themselves (the test split reuses it).
    x = (images if split == "train" else _load_imagefolder(cfg, "train").images).float().div(255)
    mean = tuple(round(v, 4) for v in x.mean(dim=(0, 2, 3)).tolist())
    std = tuple(round(max(v, 1e-3), 4) for v in x.std(dim=(0, 2, 3)).tolist())
    info = DatasetInfo("imagefolder", len(classes), images.shape[1], size, mean, std, tuple(classes))
    return ImageTensors(images.contiguous(), labels, info, split, str(root))


def _image_mode(path: Path) -> str:
    from PIL import Image

    with Image.open(path) as im:
        return im.mode


def synthetic_tiny(split: str, seed: int = 1234) -> ImageTensors:
    """10 classes of 3x16x16 images: a smooth class template plus noise (1000 train, 200 test).

    Learnable to well above chance in a few epochs, so tests can check that training works.
    """
    info = _INFO["synthetic-tiny"]
    g = torch.Generator().manual_seed(seed)
    templates = torch.rand(info.num_classes, 3, 4, 4, generator=g)
    templates = torch.nn.functional.interpolate(templates, size=16, mode="bilinear", align_corners=False)
    n = 1000 if split == "train" else 200
    g_split = torch.Generator().manual_seed(seed + (0 if split == "train" else 1))
    labels = torch.arange(n) % info.num_classes
    labels = labels[torch.randperm(n, generator=g_split)]
    noise = 0.15 * torch.randn(n, 3, 16, 16, generator=g_split)
    images = ((templates[labels] + noise).clamp(0, 1) * 255).round().to(torch.uint8)
    return ImageTensors(images, labels, info, split, "generated")


_LOADERS: dict[str, Callable[[DataConfig, str], ImageTensors]] = {
    "fashion-mnist": lambda cfg, split: _load_mnist_like(cfg, split, "FashionMNIST", DEBIAN_FASHION_MNIST),
    "mnist": lambda cfg, split: _load_mnist_like(cfg, split, "MNIST", None),
    "cifar10": _load_torchvision,
    "cifar100": _load_torchvision,
    "svhn": _load_torchvision,
    "imagefolder": _load_imagefolder,
    "synthetic-tiny": lambda cfg, split: synthetic_tiny(split),
}
DATASETS = tuple(_LOADERS)


def load_dataset(cfg: DataConfig | str, split: str = "train") -> ImageTensors:
    """Load split 'train' or 'test' of the dataset named in `cfg` into memory."""
    if isinstance(cfg, str):
        cfg = DataConfig(dataset=cfg)
    if cfg.dataset not in _LOADERS:
        raise unknown("dataset", cfg.dataset, DATASETS)
    if split not in SPLITS:
        raise unknown("split", split, SPLITS)
    return _LOADERS[cfg.dataset](cfg, split)


def dataset_info(cfg: DataConfig | str) -> DatasetInfo:
    """The dataset's facts without loading it, where they are fixed; else from its test split."""
    name = cfg if isinstance(cfg, str) else cfg.dataset
    if name in _INFO:
        return _INFO[name]
    return load_dataset(cfg, "test").info
