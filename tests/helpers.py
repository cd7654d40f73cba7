"""What several test modules share: tiny teachers, configs and runs, store fixtures."""

from dataclasses import asdict
from pathlib import Path

import torch

from fedinv.checkpoint import TEACHER, ModelCheckpoint, save_checkpoint
from fedinv.config import DataConfig, PartitionConfig
from fedinv.data.datasets import load_dataset
from fedinv.federated.config import FederateConfig, FederatedRunConfig, GeneratorConfig
from fedinv.federated.feddistill import QueryParams
from fedinv.federated.registry import server_step_class
from fedinv.models import build_model
from fedinv.oneshot.synthesis.config import SynthesisConfig
from fedinv.oneshot.synthesis.registry import method_class
from fedinv.oneshot.teachers import TeacherConfig
from fedinv.store import StoreWriter


# data
REPO = Path(__file__).resolve().parent.parent  # the repository's root
CPU = torch.device("cpu")
INFO = load_dataset("synthetic-tiny").info
TINY_DATA = DataConfig(dataset="synthetic-tiny")
TINY_TOML = REPO / "assets" / "configs" / "tiny.toml"


# teachers
def model_dict(name: str, channels: int, classes: int, size: int) -> dict:
    """A checkpoint's `model` entry written by hand (to build inconsistent checkpoints on purpose)."""
    return {"name": name, "in_channels": channels, "num_classes": classes, "image_size": size}


def random_teachers(n=3, name="lenet5", classes=10, seed=0):
    """Teachers with random weights and random BN running statistics (so BN terms are nonzero)."""
    torch.manual_seed(seed)
    models = []
    for _ in range(n):
        m = build_model(name, 3, classes, 16)
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.normal_()
                mod.running_var.uniform_(0.5, 2.0)
        models.append(m.eval())
    counts = torch.randint(1, 40, (n, classes))
    counts[0, :3] = 0  # teacher 0 never saw labels 0-2
    return models, counts


def write_teachers(folder, models, counts, info=INFO, name="lenet5"):
    """Save `models` as the teacher checkpoints node-K.pt of `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, (m, c) in enumerate(zip(models, counts)):
        shape = info.image_shape
        save_checkpoint(ModelCheckpoint(TEACHER, model_dict(name, shape[0], len(c), shape[1]), m.state_dict(),
                                        label_counts=c.tolist(), extra={"node": i, "dataset": asdict(info)}),
                        folder / f"node-{i}.pt")


def tiny_teacher_config(**kw) -> TeacherConfig:
    """A teachers stage of seconds: lenet5, 2 epochs."""
    base = dict(model="lenet5", epochs=2, batch_size=32, lr=0.05, device="cpu")
    base.update(kw)
    return TeacherConfig(**base)


# synthesis and stores
def small_cfg(**kw):
    """A small deepinversion config (4 iterations), 50 images in batches of 12."""
    base = dict(num_images=50, batch_size=12, device="cpu", teachers_per_step=2)
    if kw.get("method", "deepinversion") == "deepinversion":
        base["iterations"] = 4
    base.update(kw)
    return SynthesisConfig.of(**base)


def gen_cfg(method="fast", **kw):
    """A small config of a generator method (or of deepinversion), 50 images in batches of 12."""
    base = dict(method=method, num_images=50, batch_size=12, teachers_per_step=2, device="cpu")
    if method in ("fast", "dense", "coboost"):
        base["steps"] = 2
    base.update(kw)
    return SynthesisConfig.of(**base)


def generator_method(teachers, cfg, amp_dtype):
    """The registered synthesizer of cfg.method (fast or dense here)."""
    return method_class(cfg.method)(teachers, cfg, amp_dtype)


def real_store(path, n=1000):
    """A store holding synthetic-tiny's real training images, soft labels = one-hot log-probs."""
    data = load_dataset("synthetic-tiny")
    info = data.info
    meta = {"num_classes": 10, "image_shape": list(info.image_shape), "mean": list(info.mean),
            "std": list(info.std), "seed": 0, "config": {"note": "real images"}, "teachers": {},
            "dataset": {"name": info.name, "class_names": list(info.class_names), "hflip": info.hflip}}
    with StoreWriter(path, meta, chunk_rows=100) as w:
        for i in range(0, n, 100):
            y = data.labels[i:i + 100]
            soft = torch.nn.functional.one_hot(y, 10).float().clamp_min(1e-4).log()
            w.append(data.images[i:i + 100], y, soft, torch.zeros(len(y), 2, dtype=torch.int32))
    return data


# multi-round
def t(*v):
    """A float32 tensor of these values."""
    return torch.tensor(v, dtype=torch.float32)


def tiny_run(algorithm="fedavg", server="none", rounds=2, **kw) -> FederatedRunConfig:
    """A multi-round run on synthetic-tiny: 4 nodes, lenet5, 2 small generator iterations."""
    step = server_step_class(server)
    return FederatedRunConfig(
        DataConfig("synthetic-tiny"), PartitionConfig(num_nodes=4, alpha=1.0),
        FederateConfig(algorithm=algorithm, server=server, model="lenet5", rounds=rounds, batch_size=32,
                       device="cpu", **kw),
        GeneratorConfig(iterations=2, batch_size=16, nz=16),
        QueryParams(validation_size=200) if algorithm == "feddistill-query" else None,
        step.Params(model_steps=2) if server in ("ftg", "feddf") else None)
