"""Adaptive mode: rounds of new batches synthesized against the current student and appended to the
store (one-shot-dataset-distillation.txt §III-A: an initial pool, then new batches per epoch; on a
CPU a batch costs minutes, hence `adaptive_every`). The rounds run the store's own synthesis method
and settings, through the synthesis interface (registry, store)."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ...config import from_dict
from ...data.batches import normalize
from ...data.datasets import DatasetInfo
from ...runtime import progress_bar, ran_on, resolve_precision
from ...store import read_meta, read_rows, writer_meta
from ..synthesis.config import SynthesisConfig
from ..synthesis.ensemble import TeacherEnsemble
from ..synthesis.method import make_synthesizer
from ..synthesis.store import append_batch, open_synthesis_store

log = logging.getLogger(__name__)


def store_synthesis(meta: dict[str, Any], device: torch.device) -> SynthesisConfig:
    """The synthesis config a store records, on `device`: what its adaptive rounds run."""
    return from_dict(SynthesisConfig, {**meta["config"], "device": str(device)})


def adaptive_round(store: Path, syn: SynthesisConfig, teachers: TeacherEnsemble, student: nn.Module, until: int,
                   device: torch.device, progress: bool) -> int:
    """Synthesize batches against the current student (`syn`: the store's own method and settings)
    and append them until the store holds `until` rows; returns its n_valid."""
    meta = read_meta(store)
    if meta["n_valid"] >= until:
        return meta["n_valid"]
    amp_dtype = resolve_precision(syn.precision, device)
    synth = make_synthesizer(teachers, syn, amp_dtype)
    was_training = student.training
    student.eval().requires_grad_(False)  # the images get gradients, the student's weights none
    with open_synthesis_store(store, writer_meta(meta), synth, resume=True, chunk_rows=syn.batch_size) as writer:
        writer.record_run(ran_on(device, amp_dtype))
        bar = progress_bar(total=math.ceil((until - writer.n_valid) / syn.batch_size),
                           desc=f"new batches ({syn.method})", leave=False, show=progress)
        while writer.n_valid < until:
            b = math.ceil(writer.n_valid / syn.batch_size)  # indices continue past the initial pool
            inv = append_batch(writer, synth, b, syn.batch_size, student=student)
            bar.update(1)
            log.debug("adaptive batch %d: %s", b, inv.losses)
        bar.close()
        n = writer.n_valid
    student.train(was_training).requires_grad_(True)
    return n


@dataclass
class AdaptiveRounds:
    """The rounds of one student's run: `batches` new batches every `every` epochs after a pool of
    `pool` rows, with the store's synthesis settings `syn`."""

    store: Path
    syn: SynthesisConfig
    teachers: TeacherEnsemble
    info: DatasetInfo
    batches: int
    every: int
    device: torch.device

    def due(self, epoch: int) -> bool:
        return epoch % self.every == 0

    def run(self, epoch: int, pool: int, student: nn.Module, progress: bool) -> dict[str, float]:
        """The round of `epoch`; returns how well the student (before learning from them) and the
        teacher ensemble classify the round's fresh images as their target labels (the report's
        Figure 3). A run killed after appending (part of) this round but before its epoch checkpoint
        appends only the missing batches (each is seeded by its index and the same student)."""
        per_round = self.batches * self.syn.batch_size
        rounds = epoch // self.every + 1
        end = adaptive_round(self.store, self.syn, self.teachers, student, pool + rounds * per_round,
                             self.device, progress)
        images, labels, _ = read_rows(self.store, np.arange(max(pool, end - per_round), end))
        x, y = normalize(images.to(self.device), self.info), labels.to(self.device)
        was_training = student.training
        with torch.no_grad():
            predicted = student.eval()(x).argmax(1)
            ensemble = self.teachers.ensemble_probs(x).argmax(1)
        student.train(was_training)
        return {"fresh_images": len(y), "fresh_student_accuracy": (predicted == y).float().mean().item(),
                "fresh_teacher_accuracy": (ensemble == y).float().mean().item()}
