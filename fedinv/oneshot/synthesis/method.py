"""The interface every synthesis method implements, what it returns, and how a run gets the
method its config names.

A `Synthesizer` turns target labels into a batch of images (`invert`) and may carry state from
batch to batch (`state_dict`): none for deepinversion, whose batch b is drawn from (seed, b) alone;
the generator, its meta optimizer and the BN averages for fast and dense. store.py keeps that state
beside the store.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence

import torch
from torch import nn

from ...errors import ConfigError
from ...models import batchnorm_models, has_batchnorm
from .registry import method_class

if TYPE_CHECKING:
    from .config import SynthesisConfig
    from .ensemble import TeacherEnsemble

StepCallback = Callable[[int, dict[str, float]], None]


@dataclass
class Inverted:
    """A synthesized batch: images x [B, C, H, W] (normalized, detached), targets y [B], the final
    loss components, and the bitmask of teachers that took part."""

    x: torch.Tensor
    y: torch.Tensor
    losses: dict[str, float]
    teacher_mask: int


class Synthesizer(Protocol):
    """One synthesis run's method, at the state of the batches it has made."""

    teachers: "TeacherEnsemble"
    cfg: "SynthesisConfig"

    def invert(self, y: torch.Tensor, batch_index: int, gen: torch.Generator, student: nn.Module | None = None,
               on_step: StepCallback | None = None) -> Inverted: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def ensemble_path(cfg: "SynthesisConfig") -> str:
    """The multi-teacher path (`--batched`) the method of `cfg` runs on."""
    return method_class(cfg.method).ensemble_path(cfg)


def require_batchnorm(models: Sequence[nn.Module], cfg: "SynthesisConfig", names: Sequence[str] = ()) -> None:
    """The BN-statistic term needs teachers with BatchNorm running statistics: refuse any without
    (naming it as `names` do, by default `teacher K (Class)`) unless the term is off."""
    no_bn = [i for i, m in enumerate(models) if not has_batchnorm(m)]
    if no_bn and cfg.a_bn > 0:
        i = no_bn[0]
        name = names[i] if names else f"teacher {i} ({type(models[i]).__name__})"
        raise ConfigError(f"{name} has no BatchNorm layer, whose running statistics inversion matches: train the "
                          f"teachers with a BN model ({', '.join(batchnorm_models())}), or switch the BN term off "
                          f"(--a-bn 0; synthesis.a_bn = 0 in a config)")


def make_synthesizer(teachers: "TeacherEnsemble", cfg: "SynthesisConfig", amp_dtype: torch.dtype | None) -> Synthesizer:
    """The synthesizer of `cfg.method`, at its initial state."""
    require_batchnorm(teachers.models, cfg)
    return method_class(cfg.method)(teachers, cfg, amp_dtype)  # type: ignore[call-arg]
