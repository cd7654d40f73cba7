"""The one rule for "is this saved run the same run?", and the epoch checkpoints built on it.

A config field marked run-time (`option(..., runtime=True)`: the device, the multi-teacher path,
how often a run evaluates, how many rounds it runs in all) changes where or how fast a run
computes, not what it computes; every other field must match for a saved run to be continued.
Teachers, synthesis stores, the student, `fedinv run` and `fedinv federate` all ask `changes`.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from torch import nn

from ..config import field_key, from_dict, to_dict
from ..errors import ConfigError
from ..runtime import read_torch, remove_stale_temporaries, save_torch
from .core import Stepper

log = logging.getLogger(__name__)


def comparable(cfg: Any) -> dict[str, Any]:
    """`to_dict(cfg)` less its run-time fields (nested configs included)."""
    out = {}
    for f in dataclasses.fields(cfg):
        if f.metadata.get("runtime"):
            continue
        value = getattr(cfg, f.name)
        out[field_key(cfg, f)] = comparable(value) if dataclasses.is_dataclass(value) else value
    return out


def changes(saved: dict[str, Any], cfg: Any) -> list[str]:
    """Names of the fields where a saved config (`to_dict` form, possibly from an older fedinv)
    differs from `cfg`, run-time fields ignored. The saved form goes through the config class, so
    a field added since, at its default, is no change."""
    load = getattr(type(cfg), "from_dict", None)  # a config class that reads its own saved form
    try:
        old = comparable(load(saved) if load is not None else from_dict(type(cfg), saved))
    except (ConfigError, TypeError) as e:
        return [f"unreadable ({e})"]
    return _diff(old, comparable(cfg))


def _diff(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _diff(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(prefix + k)
    return out


def save_progress(path: str | Path, *, epoch: int, model: nn.Module, stepper: Stepper, config: Any,
                  history: list[dict[str, Any]], **extra: Any) -> None:
    """An epoch checkpoint: weights, optimizer (and GradScaler), history, config, and `extra`."""
    save_torch({"epoch": epoch, "model": model.state_dict(), **stepper.state_dict(), "history": history,
                "config": to_dict(config), **extra}, path)


def load_progress(path: str | Path, config: Any, *, model: nn.Module, stepper: Stepper, what: str,
                  **expected: Any) -> dict[str, Any] | None:
    """Restore `model` and `stepper` from an epoch checkpoint of the same run; returns the saved
    dict, or None (nothing saved, or another run: config `changes` or an `expected` entry differs)."""
    path = Path(path)
    remove_stale_temporaries(path)  # of a run killed while writing this checkpoint
    if not path.is_file():
        return None
    state = read_torch(path, f"epoch checkpoint of {what}", keys=("config", "model", "optimizer"))
    diff = changes(state["config"], config) + [k for k, v in expected.items() if state.get(k) != v]
    if diff:
        log.warning("%s: %s was made by another run (%s); starting over", what, path, ", ".join(diff))
        return None
    model.load_state_dict(state["model"])
    stepper.load_state_dict(state)
    return state
