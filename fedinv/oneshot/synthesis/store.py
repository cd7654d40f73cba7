"""A synthesis run's rows in the HDF5 store: one synthesized batch as the store keeps it (labels
drawn, images inverted, soft labels from the class-level ensemble, provenance; drawn from random
stream (seed, batch) alone), appended with the state the method carries from batch to batch.

That state is saved beside the store (`state_path`) after every appended batch; a resumed run
reloads it and drops the rows written after it, so it writes exactly what an uninterrupted run writes.
"""

from __future__ import annotations

import contextlib
import math
import shutil
from pathlib import Path
from typing import Any, Collection, Iterator

import torch
from torch import nn

from ... import __version__
from ...data.batches import denormalize
from ...data.datasets import DatasetInfo
from ...errors import DivergedError, RunStateError
from ...runtime import Stream, atomic_path, read_torch, remove_stale_temporaries, rng, save_torch
from ...store import StoreWriter
from .labels import sample_labels
from .method import Inverted, StepCallback, Synthesizer
from .objective import batch_teachers

Rows = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # images u8, labels, soft, source


def to_uint8(x: torch.Tensor, info: DatasetInfo) -> torch.Tensor:
    return (denormalize(x.float(), info) * 255).round().to(torch.uint8)


def make_batch(synth: Synthesizer, b: int, size: int, *, student: nn.Module | None = None,
               on_step: StepCallback | None = None) -> tuple[Rows, Inverted]:
    """Synthesize batch `b` of `size` images with `synth` (any registered method).

    Returns the store rows (images uint8, labels, soft labels, source) and the method's result.
    Labels and every per-batch draw come from random stream (seed, b).
    """
    teachers, cfg = synth.teachers, synth.cfg
    gen = rng(cfg.seed, Stream.SYNTHESIS_BATCH, b)
    counts = teachers.counts
    if cfg.label_sampler == "local":  # the batch's own teachers' counts (the config ensures they are fixed);
        own = counts[batch_teachers(cfg, len(teachers), b)]  # all nodes' where a claims check left them none
        counts = own if bool(own.sum() > 0) else counts
    y = sample_labels(cfg.label_sampler, counts, size, gen)
    inv = synth.invert(y, b, gen, student=student, on_step=on_step)
    soft = teachers.ensemble_log_probs(inv.x)
    if not all(math.isfinite(v) for v in inv.losses.values()) or not torch.isfinite(soft).all():
        raise DivergedError(f"synthetic batch {b}: the loss is not finite ({inv.losses}); nothing of it was "
                            f"written. Lower the learning rate, or check the teachers")
    mask = inv.teacher_mask if len(teachers) <= 31 else -1
    source = torch.tensor([[b, mask]] * size, dtype=torch.int32)
    return (to_uint8(inv.x, teachers.info), y, soft, source), inv


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
                         chunk_rows: int, renew: Collection[str] = ()) -> Iterator[StoreWriter]:
    """A StoreWriter on `path` with `synth` at the state of its last row (`renew`: see StoreWriter).

    A stateful method reloads the state saved beside the store and rewinds the store to the rows
    that state has seen (a kill between a batch's rows and its state loses that batch, which is
    then written again). A state file without its store, or rows without their state, is an error.
    """
    sp = state_path(path)
    with StoreWriter(path, meta, resume=resume, chunk_rows=chunk_rows, renew=renew) as writer:
        if not synth.cfg.per_batch:
            remove_stale_temporaries(sp)
            if writer.created:
                sp.unlink(missing_ok=True)
            elif sp.is_file():
                state = read_torch(sp, "generator state", synth.teachers.device, keys=("rows", "synthesizer"))
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
