"""Model registry: name -> constructor taking (in_channels, num_classes, image_size); models from
outside it are `module:factory` paths (e.g. torchvision.models:resnet18) or `timm:NAME`, built only
when trusted (`--trust-model`).

Teachers need BatchNorm, because inversion matches its running statistics (the paper CNNs
cnn1 / cnn2 have their optional BN on). `ModelSpec.batchnorm` says which models have it: the
GroupNorm and normalization-free models (gncnn, feddyn-cnn, resnet18-gn, the models of FedDyn's
and FedFTG's code) serve the multi-round mode and students.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from dataclasses import dataclass
from typing import Any, Callable, Collection

import torch
from torch import nn

from ..errors import ConfigError, unknown
from ..runtime import rng
from .resnet import resnet18, resnet18_gn, resnet34
from .small import bncnn, cnn1, cnn2, feddyn_cnn, gncnn, lenet5
from .vgg import vgg11

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    build: Callable[..., nn.Module]
    summary: str
    min_image_size: int = 8
    batchnorm: bool = True  # carries BN running statistics: can be a teacher that inversion matches


MODELS: dict[str, ModelSpec] = {s.name: s for s in (
    ModelSpec("bncnn", bncnn, "small BatchNorm CNN, 3 conv blocks (32-64-128); the CPU default"),
    ModelSpec("gncnn", gncnn, "bncnn with GroupNorm(2) in place of BatchNorm (no running statistics)",
              batchnorm=False),
    ModelSpec("feddyn-cnn", feddyn_cnn, "FedDyn's CIFAR CNN: 5x5 convs 64-64, FC 384-192, no normalization",
              min_image_size=16, batchnorm=False),
    ModelSpec("cnn1", cnn1, "FedDistill CNN1: 3x3 convs 32-64-64, FC 1024-64 (feddistill.txt IV-B), with BN",
              min_image_size=24),
    ModelSpec("cnn2", cnn2, "FedDistill CNN2: 3x3 convs 128-128-128, FC 2048 (feddistill.txt IV-B), with BN",
              min_image_size=24),
    ModelSpec("lenet5", lenet5, "LeNet-5 with BatchNorm"),
    ModelSpec("resnet18", resnet18, "CIFAR-style ResNet-18 (3x3 stem, no max-pool)"),
    ModelSpec("resnet18-gn", resnet18_gn, "resnet18 with GroupNorm(2) in place of every BatchNorm (FedDyn's code)",
              batchnorm=False),
    ModelSpec("resnet34", resnet34, "CIFAR-style ResNet-34 (3x3 stem, no max-pool)"),
    ModelSpec("vgg11", vgg11, "VGG-11 with BatchNorm, one FC classifier", min_image_size=16),
)}


def is_factory(name: str) -> bool:
    """Is `name` a Python `module:factory` path (a model from outside the registry)?"""
    return ":" in name


def build_model(name: str, in_channels: int, num_classes: int, image_size: int,
                trust: Collection[str] = (), adapt: bool = True) -> nn.Module:
    """Construct model `name` for inputs [B, in_channels, image_size, image_size].

    `name` is a registry name, or a `module:factory` path listed in `trust`: building it imports
    the module and calls the factory, that is runs its code, so a name read from a file is built
    only when the user has named it as trusted (`--trust-model`).
    """
    if is_factory(name):
        if name not in trust:
            raise ConfigError(f"model {name!r} is Python code named by a file; fedinv runs it only when you "
                              f"trust it: pass --trust-model {name}")
        if name.startswith(TIMM):
            return timm_model(name[len(TIMM):], in_channels, num_classes)
        return call_factory(name, adapt, in_channels=in_channels, num_classes=num_classes, image_size=image_size)
    if name not in MODELS:
        raise unknown("model", name, MODELS)
    spec = MODELS[name]
    if image_size < spec.min_image_size:
        raise ConfigError(f"model {name!r} needs images of at least {spec.min_image_size} px, got {image_size}")
    return spec.build(in_channels=in_channels, num_classes=num_classes, image_size=image_size)


TIMM = "timm:"  # timm:NAME is timm.create_model(NAME), freshly initialized


def timm_model(name: str, in_channels: int, num_classes: int) -> nn.Module:
    """timm's model `name` (randomly initialized) for `in_channels` and `num_classes`."""
    try:
        import timm
    except ImportError as e:
        raise ConfigError(f"model timm:{name} needs timm: pip install 'fedinv[timm]' (or pip install timm)") from e
    try:
        return timm.create_model(name, pretrained=False, in_chans=in_channels, num_classes=num_classes)
    except RuntimeError as e:  # timm's "Unknown model"
        raise ConfigError(f"model timm:{name}: {e}") from e


def call_factory(path: str, adapt: bool = True, **facts: int) -> nn.Module:
    """Import `module:factory` (the factory may be a dotted attribute) and call it with those of
    `facts` (in_channels, num_classes, image_size) that its signature names (num_classes alone when
    it names none but takes **kwargs, as torchvision's builders do); with `adapt`, where it takes no
    in_channels or num_classes, the model's first convolution and last linear layer are adapted to
    them (`adapt_ends`), and the log says so (not for weights trained elsewhere: `import-teacher`
    checks that the model as its factory makes it takes the data)."""
    module_name, _, attr = path.partition(":")
    try:
        factory: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            factory = getattr(factory, part)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"model factory {path!r} not found: {e}") from e
    if not callable(factory):
        raise ConfigError(f"model factory {path!r} is not callable")
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}
    given = {k: v for k, v in facts.items() if k in params}
    if not given and any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        given = {"num_classes": facts["num_classes"]}  # **kwargs (torchvision's builders): the common name
    try:
        model = factory(**given)
    except Exception as e:  # the user's code: whatever it raises is a bad model name or setting
        raise ConfigError(f"model factory {path!r} failed: {type(e).__name__}: {e}") from e
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model factory {path!r} returned {type(model).__name__}, not a torch.nn.Module")
    for change in adapt_ends(model, facts.get("in_channels"), facts.get("num_classes")) if adapt else ():
        log.info("model %s: %s", path, change)
    return model


def adapt_ends(model: nn.Module, in_channels: int | None, num_classes: int | None) -> list[str]:
    """Make `model` take `in_channels` and predict `num_classes`: its first Conv2d and its last Linear
    are replaced, freshly initialized, where they do not fit (a torchvision ImageNet model on
    grey 28x28 images of 10 classes). Returns what was changed."""
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    changes = []
    if in_channels is not None and convs and convs[0][1].in_channels != in_channels:
        name, old = convs[0]
        _replace(model, name, nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding,
                                        old.dilation, old.groups, old.bias is not None, old.padding_mode))
        changes.append(f"first convolution {name} takes {in_channels} channels instead of {old.in_channels}")
    if num_classes is not None and linears and linears[-1][1].out_features != num_classes:
        name, old = linears[-1]
        _replace(model, name, nn.Linear(old.in_features, num_classes, old.bias is not None))
        changes.append(f"classifier {name} predicts {num_classes} classes instead of {old.out_features}")
    return changes


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, new)


def batchnorm_models() -> list[str]:
    """The registry models with BN running statistics (fit to be inverted)."""
    return [name for name, spec in MODELS.items() if spec.batchnorm]


def has_batchnorm(model: nn.Module) -> bool:
    """Does the model carry BatchNorm running statistics (what inversion matches)?"""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def build_model_for(name: str, info, trust: Collection[str] = (), adapt: bool = True) -> nn.Module:
    """Model `name` for a dataset's images and classes (`info`: a `DatasetInfo`); `trust` and `adapt`
    as in `build_model`."""
    return build_model(name, info.channels, info.num_classes, info.image_size, trust, adapt)


def seeded_model(name: str, info, seed: int, stream: int, *parts: int, trust: Collection[str] = ()) -> nn.Module:
    """`build_model_for` with weights drawn from random stream (seed, stream, *parts); `trust` as in
    `build_model`.

    Module constructors draw from torch's global generator; fork_rng keeps that draw from
    disturbing (or depending on) anything outside this function.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(rng(seed, stream, *parts).initial_seed())
        return build_model_for(name, info, trust)


def place(model: nn.Module, device: torch.device | str) -> nn.Module:
    """Move `model` to `device`; on a CPU, its convolution weights go channels_last (in place).

    channels_last is oneDNN's native layout: a convolution with channels_last weights runs in it
    whatever its input's layout, with no reorder per call. The bncnn student's step (batch 128, 2
    CPU cores) measured 1.5x faster than in the plain layout in fp32, 2.3x with bf16 autocast
    (experiments/speed). Values are unchanged; only the memory order differs (and with it the
    summation order inside a convolution: seeded results move in the last bits).
    """
    device = torch.device(device)
    if device.type == "cpu":
        return model.to(device, memory_format=torch.channels_last)
    return model.to(device)


__all__ = ["MODELS", "ModelSpec", "batchnorm_models", "build_model", "build_model_for", "call_factory", "has_batchnorm",
           "is_factory", "place", "seeded_model"]
