"""The synthesis methods behind one interface, and the store they append to with the state they
carry from batch to batch.

A `Synthesizer` turns target labels into a batch of images (`invert`) and may carry state between
batches (`state_dict`): none for deepinversion, whose batch b is drawn from (seed, b) alone; the
generator, its meta optimizer and the BN averages for fast and dense. That state is saved beside
the store (`state_path`) after every appended batch; a resumed run reloads it and drops the rows
written after it, so it writes exactly what an uninterrupted run writes.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path
from typing import Any, Iterator, Protocol, Sequence

import torch
from torch import nn

from .. import __version__
from ..config import SynthesisConfig
from ..errors import ConfigError, RunStateError
from ..models import batchnorm_models, has_batchnorm
from ..runtime import atomic_path, remove_stale_temporaries, save_torch
from ..store import StoreWriter
from .batch import make_batch, pixel_bounds
from .engine import Inverted, StepCallback, invert_batch
from .ensemble import TeacherEnsemble
from .generative import GeneratorSynthesizer

METHODS = ("deepinversion", "fast", "dense")


class Synthesizer(Protocol):
    teachers: TeacherEnsemble
    cfg: SynthesisConfig

    def invert(self, y: torch.Tensor, batch_index: int, gen: torch.Generator, student: nn.Module | None = None,
               on_step: StepCallback | None = None) -> Inverted: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class PerBatchSynthesizer:
    """deepinversion: every batch's pixels optimized from noise (engine.invert_batch); no state."""

    def __init__(self, teachers: TeacherEnsemble, cfg: SynthesisConfig, amp_dtype: torch.dtype | None):
        self.teachers, self.cfg, self.amp_dtype = teachers, cfg, amp_dtype
        self.bounds = pixel_bounds(teachers.info, teachers.device)

    def invert(self, y: torch.Tensor, batch_index: int, gen: torch.Generator, student: nn.Module | None = None,
               on_step: StepCallback | None = None) -> Inverted:
        return invert_batch(self.teachers, y, self.cfg, batch_index=batch_index, bounds=self.bounds, gen=gen,
                            amp_dtype=self.amp_dtype, student=student, on_step=on_step)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def require_batchnorm(models: Sequence[nn.Module], cfg: SynthesisConfig, names: Sequence[str] = ()) -> None:
    """The BN-statistic term needs teachers with BatchNorm running statistics: refuse any without
    (naming it as `names` do, by default `teacher K (Class)`) unless the term is off."""
    no_bn = [i for i, m in enumerate(models) if not has_batchnorm(m)]
    if no_bn and cfg.a_bn > 0:
        i = no_bn[0]
        name = names[i] if names else f"teacher {i} ({type(models[i]).__name__})"
        raise ConfigError(f"{name} has no BatchNorm layer, whose running statistics inversion matches: train the "
                          f"teachers with a BN model ({', '.join(batchnorm_models())}), or switch the BN term off "
                          f"(--a-bn 0; synthesis.a_bn = 0 in a config)")


def make_synthesizer(teachers: TeacherEnsemble, cfg: SynthesisConfig, amp_dtype: torch.dtype | None) -> Synthesizer:
    """The synthesizer of `cfg.method`, at its initial state."""
    require_batchnorm(teachers.models, cfg)
    if cfg.per_batch:
        return PerBatchSynthesizer(teachers, cfg, amp_dtype)
    return GeneratorSynthesizer(teachers, cfg, amp_dtype)


def ensemble_path(cfg: SynthesisConfig) -> str:
    """The multi-teacher path a method runs on: BN momentum needs the per-teacher loop."""
    return "loop" if not cfg.per_batch and cfg.bn_momentum else cfg.batched


def state_path(store: str | Path) -> Path:
    """Where a store's synthesizer state lives: beside it, `NAME.state.pt`."""
    store = Path(store)
    return store.with_name(store.name + ".state.pt")


def copy_synthesis_store(src: str | Path, dst: str | Path) -> None:
    """Copy a store with its synthesizer state, so that new batches can go to the copy (an online
    student's) and leave `src` as it is. Each file appears under its final name only when complete,
    the store last: a copy killed midway leaves no `dst`, and is made again."""
    src, dst = Path(src), Path(dst)
    if state_path(src).is_file():
        with atomic_path(state_path(dst)) as tmp:
            shutil.copyfile(state_path(src), tmp)
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


@contextlib.contextmanager
def open_synthesis_store(path: str | Path, meta: dict[str, Any], synth: Synthesizer, *, resume: bool,
                         chunk_rows: int) -> Iterator[StoreWriter]:
    """A StoreWriter on `path` with `synth` at the state of its last row.

    A stateful method reloads the state saved beside the store and rewinds the store to the rows
    that state has seen (a kill between a batch's rows and its state loses that batch, which is
    then written again). A state file without its store, or rows without their state, is an error.
    """
    sp = state_path(path)
    with StoreWriter(path, meta, resume=resume, chunk_rows=chunk_rows) as writer:
        if not synth.cfg.per_batch:
            remove_stale_temporaries(sp)
            if writer.created:
                sp.unlink(missing_ok=True)
            elif sp.is_file():
                state = torch.load(sp, map_location=synth.teachers.device, weights_only=True)
                if state["rows"] > writer.n_valid:
                    raise RunStateError(f"{sp} was saved at {state['rows']} rows, but {path} holds only "
                                        f"{writer.n_valid}; they belong to different runs")
                synth.load_state_dict(state["synthesizer"])
                writer.rewind(state["rows"])
            elif writer.n_valid > synth.cfg.batch_size:
                raise RunStateError(f"{path} holds {writer.n_valid} rows made by the {synth.cfg.method} method, "
                                    f"but its generator state {sp.name} is missing; copy it with the store")
            else:
                writer.rewind(0)
        yield writer


def append_batch(writer: StoreWriter, synth: Synthesizer, b: int, size: int, *, student: nn.Module | None = None,
                 on_step: StepCallback | None = None) -> Inverted:
    """Synthesize batch `b`, append it, and save the synthesizer's state beside the store."""
    rows, inv = make_batch(synth, b, size, student=student, on_step=on_step)
    writer.append(*rows)
    if not synth.cfg.per_batch:
        save_torch({"rows": writer.n_valid, "fedinv_version": __version__, "synthesizer": synth.state_dict()},
                   state_path(writer.path))
    return inv
