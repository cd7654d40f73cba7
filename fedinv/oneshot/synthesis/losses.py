"""The inversion losses as pure functions of tensors.

Shapes: images x [B, C, H, W]; logits [B, K]; labels y [B] int64; per-teacher masks and
weights over labels [K].
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

NEG = -1e4  # a logit that softmax maps to ~0, finite in fp16 (no inf - inf = nan)


def masked_cross_entropy(logits: torch.Tensor, y: torch.Tensor, seen: torch.Tensor | None = None,
                         weight: torch.Tensor | None = None, hard: float = 0.0) -> torch.Tensor:
    """Cross-entropy of a teacher on target labels y, with head masking and label weights.

    seen [K] bool: the labels this teacher's data held. With it, the logits of unseen labels are
    left out of the softmax (one-shot-dataset-distillation.txt §III/IV-E1), and samples whose
    target the teacher never saw carry no loss (the teacher knows nothing about them).
    weight [K] float: per-label weights w_y (eq. 5: the share of label y in the teacher's data);
    each sample's CE is multiplied by w_{y_i}.
    hard h > 0: each sample's CE is also multiplied by (1 - p)^h, p the teacher's probability of its
    target (detached): images the teacher already finds easy weigh less (Co-Boosting's hard-sample
    mining, its `hs`).
    Returns the mean over the batch (a sum over samples divided by B, so masked-out samples count
    as zero and the scale does not depend on how many were masked).
    """
    logits = logits.float()
    per_sample_w = torch.ones_like(y, dtype=logits.dtype)
    if seen is not None:
        logits = logits.masked_fill(~seen, NEG)
        per_sample_w = per_sample_w * seen[y].to(logits.dtype)
    if weight is not None:
        per_sample_w = per_sample_w * weight[y].to(logits.dtype)
    ce = F.cross_entropy(logits, y, reduction="none")
    if hard:
        p = torch.exp(-ce.detach())  # the probability of the target
        per_sample_w = per_sample_w * (1 - p).clamp_min(0) ** hard
    return (ce * per_sample_w).sum() / len(y)


def bn_stat_loss(means: Sequence[torch.Tensor], variances: Sequence[torch.Tensor],
                 running_means: Sequence[torch.Tensor], running_vars: Sequence[torch.Tensor],
                 first_multiplier: float = 1.0) -> torch.Tensor:
    """sum_l m_l (||mu_l - mu_l^BN||_2 + ||var_l - var_l^BN||_2), m_0 = first_multiplier, else 1.

    The batch statistics of each BN layer's input are pulled towards the running statistics the
    teacher stored (DeepInversion, eq. 3). Computed in fp32.
    """
    total = torch.zeros((), device=means[0].device)
    for i, (m, v, rm, rv) in enumerate(zip(means, variances, running_means, running_vars)):
        layer = torch.linalg.vector_norm(m.float() - rm.float()) + torch.linalg.vector_norm(v.float() - rv.float())
        total = total + (first_multiplier if i == 0 else 1.0) * layer
    return total


class _ChannelMoments(torch.autograd.Function):
    """Per-channel E[x] and E[x^2] of x [B, C, H, W], with a one-pass backward.

    The autograd graph of torch.var_mean costs several full passes over the activation in the
    backward; this gradient, (g_mean + 2 g_sq x) / M per channel, is a single addcmul. It is
    the largest share of the engine's overhead over a bare forward/backward on CPU.
    """

    generate_vmap_rule = True  # usable inside torch.func.vmap (the batched-teacher path)

    @staticmethod
    def forward(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        xf = x.float()
        return xf.mean((0, 2, 3)), (xf * xf).mean((0, 2, 3))

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, g_mean: torch.Tensor, g_sq: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        m = x.numel() // x.shape[1]
        shift, scale = (g_mean / m).view(1, -1, 1, 1), (2 * g_sq / m).view(1, -1, 1, 1)
        return torch.addcmul(shift, x.float(), scale).to(x.dtype)


def channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and biased variance of a BN input [B, C, H, W] -> ([C], [C]), in fp32.

    var = E[x^2] - E[x]^2, clamped at 0; BN inputs are conv outputs of moderate scale, where
    fp32 keeps this well within the precision the BN-statistic loss needs.
    """
    mean, sq = _ChannelMoments.apply(x)
    return mean, (sq - mean * mean).clamp_min(0)


def _diffs(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Differences to the right, down, and both diagonal neighbours."""
    return (x[..., :, :-1] - x[..., :, 1:], x[..., :-1, :] - x[..., 1:, :],
            x[..., 1:, :-1] - x[..., :-1, 1:], x[..., :-1, :-1] - x[..., 1:, 1:])


def tv_l1(x: torch.Tensor) -> torch.Tensor:
    """Total variation, l1: the sum over 4 directions of the mean |difference| of neighbours."""
    return sum(d.float().abs().mean() for d in _diffs(x))


def tv_l2(x: torch.Tensor) -> torch.Tensor:
    """Total variation, l2: the sum over 4 directions of the l2 norm of neighbour differences
    (as in the DeepInversion reference code)."""
    return sum(torch.linalg.vector_norm(d.float()) for d in _diffs(x))


def l2_prior(x: torch.Tensor) -> torch.Tensor:
    """||x||_2 over the batch (the reference code's image l2 prior)."""
    return torch.linalg.vector_norm(x.float())


def js_divergence(p: torch.Tensor, q: torch.Tensor, clamp: tuple[float, float] = (0.01, 0.99)) -> torch.Tensor:
    """Jensen-Shannon divergence between rows of probabilities p, q [B, K], batch mean.

    JS = 0.5 KL(p || m) + 0.5 KL(q || m), m = (p + q) / 2; probabilities are clamped to `clamp`
    first, as in Adaptive DeepInversion, which keeps log() finite and the gradient bounded.
    """
    p, q = p.float(), q.float()
    m = (0.5 * (p + q)).clamp(*clamp)
    p, q = p.clamp(*clamp), q.clamp(*clamp)
    kl_pm = (p * (p.log() - m.log())).sum(1)
    kl_qm = (q * (q.log() - m.log())).sum(1)
    return (0.5 * kl_pm + 0.5 * kl_qm).mean()


def competition_loss(teacher_logits: torch.Tensor, student_logits: torch.Tensor, temperature: float = 3.0,
                     seen: torch.Tensor | None = None) -> torch.Tensor:
    """Adaptive DeepInversion's competition term: 1 - clamp(JS(teacher, student), 0, 1) at temperature T.

    Minimizing it pushes images towards where teacher and student disagree. With `seen`, the
    teacher's unseen heads (and the student's) are masked out before the softmax.
    """
    t, s = teacher_logits.float(), student_logits.float()
    if seen is not None:
        t, s = t.masked_fill(~seen, NEG), s.masked_fill(~seen, NEG)
    js = js_divergence(F.softmax(t / temperature, 1), F.softmax(s / temperature, 1))
    return 1.0 - js.clamp(0.0, 1.0)
