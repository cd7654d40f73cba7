"""The teachers as one ensemble: per-teacher inversion losses, batched (vmap) or looped, and the
class-level ensemble's predictions.

Batched path: teachers of one architecture are evaluated in a single call: their parameters are
stacked (`torch.func.stack_module_state`) and one `functional_call` is vmapped over the teacher
dimension, which PyTorch lowers to grouped convolutions. It removes the per-teacher kernel
launches that dominate on a GPU. Looped path: a Python loop over the teachers, in channels_last
memory format; on a CPU, where the work is compute- and memory-bound rather than launch-bound,
it measured 3x faster than the batched path (experiments/synthesis-speed), so `auto` picks it there.
Both paths run the same per-teacher function and give the same losses.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Collection, Sequence

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from ...data.datasets import DatasetInfo
from ...errors import ConfigError
from ...evaluate import class_shares, ensemble_probs, median_probs
from ..teacher_files import Teachers, as_teachers
from .hooks import BNMomentum, BNStatistics
from .losses import bn_stat_loss, competition_loss, masked_cross_entropy

Blend = Callable[[list[torch.Tensor], list[torch.Tensor]], tuple[list[torch.Tensor], list[torch.Tensor]]]


@dataclass(frozen=True)
class TermWeights:
    """What the per-teacher terms need besides the images (no image priors: those are shared)."""

    first_bn_multiplier: float = 1.0
    comp_temperature: float = 3.0
    hard: float = 0.0  # hard-sample exponent of the CE (masked_cross_entropy)


def teacher_terms(forward: Callable[[torch.Tensor], torch.Tensor], stats: BNStatistics, x: torch.Tensor,
                  y: torch.Tensor, seen: torch.Tensor, weight: torch.Tensor, student_logits: torch.Tensor | None,
                  tw: TermWeights, blend: Blend | None = None) -> torch.Tensor:
    """One teacher's [ce, bn, comp] on images x [B, C, H, W] with targets y [B].

    forward: the teacher (a module, or its functional call); stats: a collector on its BN layers.

    seen [K] bool masks the output heads (all True = no masking); weight [K] weighs the CE per
    label (all ones = plain CE). comp is 0 without a student. blend: maps the batch's BN input
    statistics (means, variances) to the ones compared with the teacher's (BN momentum).
    """
    with stats as layers:
        logits = forward(x)
    ce = masked_cross_entropy(logits, y, seen, weight, tw.hard)
    means, variances = [s.mean for s in layers], [s.var for s in layers]
    if blend is not None:
        means, variances = blend(means, variances)
    bn = (bn_stat_loss(means, variances, [s.running_mean for s in layers], [s.running_var for s in layers],
                       tw.first_bn_multiplier) if layers else torch.zeros((), device=x.device))
    comp = (competition_loss(logits, student_logits, tw.comp_temperature, seen) if student_logits is not None
            else torch.zeros((), device=x.device))
    return torch.stack([ce, bn, comp])


class TeacherEnsemble:
    """N frozen teachers (eval mode) with their label counts [N, K] and their dataset's facts.

    The set takes the modules over: they are moved to `device`, frozen, put in eval mode and (on
    the looped path) converted to channels_last in place.

    `terms(x, y, idx, ...)` returns the [len(idx), 3] tensor of (ce, bn, comp) for the sampled
    teachers `idx`. `batched=None` chooses the vmap path on CUDA when all teachers share one
    architecture, and the loop otherwise.
    """

    def __init__(self, models: Sequence[nn.Module], label_counts: torch.Tensor, device: torch.device,
                 info: DatasetInfo, batched: bool | None = None):
        self.info = info
        self.models = [m.to(device).eval().requires_grad_(False) for m in models]
        self.device = device
        self.use_counts(label_counts)
        self.median = False  # per class the median of the teachers' probabilities, claims ignored (`claims`)
        self.node_weights = torch.ones(len(self.models), device=device)  # learned by the student (Co-Boosting)
        same_arch = len({_signature(m) for m in self.models}) == 1
        if batched and not same_arch:
            raise ValueError("the batched path needs teachers of one architecture")
        self.batched = (same_arch and device.type == "cuda") if batched is None else batched
        if not self.batched:
            self.models = [m.to(memory_format=torch.channels_last) for m in self.models]
        self._stats = [BNStatistics(m) for m in self.models]
        if self.batched:
            self.template = copy.deepcopy(self.models[0])
            self._template_stats = BNStatistics(self.template)
            self.params, self.buffers = stack_module_state(self.models)

    def use_counts(self, label_counts: torch.Tensor) -> None:
        """Weigh the teachers by these label counts [N, K] (as sent, or as a claims check left them):
        head masks, CE label weights and the class-level ensemble's weights."""
        self.counts = label_counts.to(self.device)
        self.seen = self.counts > 0  # [N, K]
        self.shares = self.counts.float() / self.counts.sum(1, keepdim=True).clamp_min(1)  # eq. 5, [N, K]
        self.class_weights = class_shares(label_counts).float().to(self.device)  # [N, K], columns sum to 1
        self.weighted = [i for i in range(len(self.models)) if bool(self.class_weights[i].any())]

    def __len__(self) -> int:
        return len(self.models)

    def last_bn_statistics(self, i: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Teacher i's BN input (mean, var) per layer on its latest forward (loop path), detached."""
        return [(s.mean.detach(), s.var.detach()) for s in self._stats[i].stats]

    @property
    def mix_weights(self) -> torch.Tensor:
        """[N, K]: the class-level weights, each teacher's row scaled by its node weight (all 1 unless
        a student learns them, `StudentConfig.ensemble_lr`)."""
        return self.class_weights * self.node_weights[:, None]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.info.image_shape

    @property
    def num_classes(self) -> int:
        return self.counts.shape[1]

    def masks(self, head_mask: bool, weighted_ce: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """The [N, K] head masks and CE label weights the config asks for."""
        seen = self.seen if head_mask else torch.ones_like(self.seen)
        weight = self.shares if weighted_ce else torch.ones_like(self.shares)
        return seen, weight

    def terms(self, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor, seen: torch.Tensor, weight: torch.Tensor,
              student_logits: torch.Tensor | None = None, tw: TermWeights = TermWeights(),
              momentum: BNMomentum | None = None) -> torch.Tensor:
        """[n, 3] per-teacher (ce, bn, comp) for teachers idx [n]; seen/weight are [N, K]. With
        `momentum` (loop path only), each teacher's BN statistics are blended with its running ones."""
        if not self.batched:
            return torch.stack([teacher_terms(self.models[i], self._stats[i], x, y, seen[i], weight[i],
                                              student_logits, tw, momentum.blender(i) if momentum else None)
                                for i in idx.tolist()])
        if momentum is not None:
            raise ValueError("BN momentum runs on the looped path (--batched loop)")
        params = {k: v[idx] for k, v in self.params.items()}
        buffers = {k: v[idx] for k, v in self.buffers.items()}

        def one(p, b, s, w):
            forward = lambda inp: functional_call(self.template, (p, b), (inp,))  # noqa: E731
            return teacher_terms(forward, self._template_stats, x, y, s, w, student_logits, tw)

        return vmap(one)(params, buffers, seen[idx], weight[idx])

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Every teacher's logits [N, B, K] (eval mode)."""
        if self.batched:
            return vmap(lambda p, b: functional_call(self.template, (p, b), (x,)))(self.params, self.buffers)
        return torch.stack([m(x) for m in self.models])

    def ensemble_probs(self, x: torch.Tensor, grad: bool = False) -> torch.Tensor:
        """FedFTG's class-level ensemble [B, K]: each teacher's softmax weighted per class by its
        share of that class's samples (times its node weight), rows normalized
        (`evaluate.ensemble_probs`); with `median`, per class the median of the teachers'
        probabilities (`evaluate.median_probs`). On the loop path a teacher with weight 0 for every
        class (a node that reported no samples) is not run.
        Under autocast the teachers compute in its dtype; the softmax and the mix are in fp32. With
        `grad`, gradients flow to x (the loop path; ODS)."""
        if self.median:
            with torch.set_grad_enabled(grad):
                return median_probs([m(x) for m in self.models] if grad or not self.batched else list(self.logits(x)))
        if grad:
            return ensemble_probs([m(x) for m in self.models], self.mix_weights)
        with torch.no_grad():
            if self.batched or len(self.weighted) == len(self.models):
                return ensemble_probs(list(self.logits(x)), self.mix_weights)
            return ensemble_probs([self.models[i](x) for i in self.weighted], self.mix_weights[self.weighted])

    def ensemble_log_probs(self, x: torch.Tensor) -> torch.Tensor:
        """log of `ensemble_probs` [B, K] (floored at 1e-8): the store's soft labels and the student's KD targets."""
        return self.ensemble_probs(x).clamp_min(1e-8).log()


def _signature(model: nn.Module) -> tuple:
    """Architecture identity: module types and parameter shapes."""
    return (type(model).__name__, tuple((k, tuple(v.shape)) for k, v in model.state_dict().items()))


BATCHED = {"auto": None, "batched": True, "loop": False}


def load_ensemble(teachers: str | Path | Teachers, device: torch.device, batched: str = "auto",
                  trust: Collection[str] = ()) -> TeacherEnsemble:
    """The ensemble of a teachers folder (a path, or one loaded already) or of teachers in memory;
    `batched` as in SynthesisConfig: auto, batched or loop; `trust` as in `load_checkpoint`."""
    loaded = as_teachers(teachers, trust)
    return TeacherEnsemble(loaded.build(device), loaded.counts(), device, loaded.info, BATCHED[batched])


@torch.no_grad()
def check_student(student: nn.Module, teachers: TeacherEnsemble, device: torch.device) -> None:
    """A student must take the teachers' images and predict their classes."""
    was_training = student.training
    student.eval()
    probe = student(torch.zeros(1, *teachers.image_shape, device=device))
    student.train(was_training)
    if probe.shape[1] != teachers.num_classes:
        raise ConfigError(f"the student predicts {probe.shape[1]} classes, the teachers {teachers.num_classes}")
