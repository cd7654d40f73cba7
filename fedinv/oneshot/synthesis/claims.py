"""Checking what the nodes claim: the label counts that set each teacher's weight per class in the
ensemble (`evaluate.class_shares`) are the nodes' own word. `claims = "checked"` holds each node to
two tests before the ensemble uses its claim:

1. Plausible size (`bound_claims`): no node may claim more than `MAX_RATIO` times the median node's
   total; a larger claim is scaled down, its class proportions kept. One node claiming a million
   images of every class would otherwise decide every soft label alone.
2. Backed by the model (`peer_agreement`, `node_scores`, `keep_nodes`): on probe images inverted
   from all teachers (`probe_images`: DeepInversion, every teacher, their own label heads), node i's
   teacher and the other teachers' ensemble (leave-one-out, by their bounded claims) should agree
   on which images are of each class i claims: per class the harmonic mean of recall and
   precision, tested only where the peers claim at least `PEER_SHARE` of the class (a class only
   node i holds cannot be checked by the others). A node's score is the mean over its tested
   classes, weighted by its claims; a node scoring under `DROP_RATIO` times the median node's score
   is dropped (weight 0 for every class): a teacher trained on flipped labels, or random weights
   with copied BatchNorm statistics, scores near 0.

The test is per node, not per class: on Fashion-MNIST's probe images an honest teacher's agreement
on one class ranges from 0.2 to 1.0 (T-shirts and shirts are easily confused), so a per-class
threshold would strip honest claims. Per node (experiments/robust, seed 0, Dirichlet 0.5): honest
teachers score 0.60-0.85, at least 0.79 of the median; random weights 0.01; a teacher trained on
flipped labels 0.23, 0.52 of the median, because it also spoils the probe images and so lowers the
others' scores (0.37-0.54). DROP_RATIO = 0.6 sits between; it was set after seeing that flip run
(0.5 kept the flipped node); on seeds 1 and 2 it dropped every flipped or random model (0.00-0.47 of
the median) and kept every honest one (0.68 and up). All of it is pure functions of the
teachers' outputs and the claims, plus the seeded probe; the stages log every node whose weight
changed and the store records the check (`ClaimsCheck.record`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from ...evaluate import class_shares
from ...runtime import Stream, rng
from .deepinversion import DeepInversionParams, invert_batch, pixel_bounds

log = logging.getLogger(__name__)

CLAIMS = ("trusted", "checked", "median")
MAX_RATIO = 2.0  # no node claims more than twice the median node's samples
PEER_SHARE = 0.25  # a class is tested where the other nodes claim at least a quarter of it
DROP_RATIO = 0.6  # a node scoring under 0.6 x the median node's score is dropped
MIN_IMAGES = 4  # fewer probe images than this that the peers call k: class k is untested
PROBE_PER_CLASS = 32
PROBE_ITERATIONS = 200


def bound_claims(counts: torch.Tensor, max_ratio: float = MAX_RATIO) -> torch.Tensor:
    """[N, K] claims -> [N, K] float64: each node's row scaled down (proportions kept) so that its
    total is at most `max_ratio` times the median of the nodes' totals."""
    counts = counts.double()
    totals = counts.sum(1)
    cap = max_ratio * totals.median()
    return counts * (cap / totals.clamp_min(1e-12)).clamp(max=1.0)[:, None]


def peer_agreement(logits: torch.Tensor, counts: torch.Tensor, min_images: int = MIN_IMAGES,
                   peer_share: float = PEER_SHARE) -> torch.Tensor:
    """[N, B, K] the teachers' logits on B probe images, [N, K] claims -> [N, K]: how far teacher i
    backs its claim for class k. On the probe images that the others' class-level ensemble
    (weighted by their claims, `class_shares`) assigns to a class i claims, with i's predictions
    among its claimed classes (its head mask): the harmonic mean of recall (of the images the peers
    call k, the share i calls k) and precision (of the images i calls k, the share the peers call
    k). A teacher with random weights that calls everything k has full recall on k but a precision
    of about 1 / (classes claimed). NaN (untested) where i claims nothing of k, where the others
    claim less than `peer_share` of class k, or where they call fewer than `min_images` images k."""
    n, _, k = logits.shape
    probs = logits.float().softmax(-1)
    counts = counts.double()
    claimed = counts > 0
    out = torch.full((n, k), float("nan"), dtype=torch.float64)
    for i in range(n):
        others = [j for j in range(n) if j != i]
        peer_total = counts[others].sum(0)
        known = peer_total >= peer_share * (peer_total + counts[i])
        shares = class_shares(counts[others]).to(probs.dtype)  # [N-1, K]
        peers = (probs[others] * shares[:, None, :]).sum(0).argmax(-1)  # [B]
        mine = claimed[i][peers]  # the images of classes i claims
        own = logits[i].float().masked_fill(~claimed[i], float("-inf")).argmax(-1)[mine]
        peers = peers[mine]
        for c in torch.nonzero(claimed[i] & known).flatten().tolist():
            called, said = peers == c, own == c
            if int(called.sum()) < min_images:
                continue
            hits = float((called & said).sum())
            recall, precision = hits / float(called.sum()), hits / max(float(said.sum()), 1.0)
            out[i, c] = 0.0 if hits == 0 else 2 * recall * precision / (recall + precision)
    return out


def node_scores(agreement: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """[N]: each node's agreement averaged over its tested classes, weighted by its claims; NaN for a
    node with no tested class."""
    tested = ~agreement.isnan()
    w = torch.where(tested, counts.double(), torch.zeros_like(agreement))
    total = w.sum(1)
    mean = (w * agreement.nan_to_num(0.0)).sum(1) / total.clamp_min(1e-12)
    return torch.where(total > 0, mean, torch.full_like(mean, float("nan")))


def keep_nodes(counts: torch.Tensor, scores: torch.Tensor, drop_ratio: float = DROP_RATIO) -> torch.Tensor:
    """[N, K] claims with the rows of the nodes scoring under `drop_ratio` times the median score
    (over the nodes with one) set to 0; a node without a score keeps its claim."""
    scored = scores[~scores.isnan()]
    if not len(scored):
        return counts
    drop = scores < drop_ratio * scored.median()
    return torch.where(drop[:, None], torch.zeros_like(counts), counts)


def probe_images(ensemble: Any, seed: int, per_class: int = PROBE_PER_CLASS,
                 iterations: int = PROBE_ITERATIONS) -> torch.Tensor:
    """`per_class` images of every class inverted from all the teachers at once (DeepInversion with
    the synthesis defaults, every teacher at every step, head masks by the claims), from random
    stream (seed, CLAIMS_PROBE)."""
    from .config import SynthesisConfig  # the synthesis config imports the method registry

    k = ensemble.num_classes
    cfg = SynthesisConfig(num_images=k * per_class, batch_size=k * per_class, teachers_per_step=0,
                          flip=ensemble.info.hflip, params=DeepInversionParams(iterations=iterations))
    gen = rng(seed, Stream.CLAIMS_PROBE)
    y = torch.arange(k).repeat_interleave(per_class)
    return invert_batch(ensemble, y, cfg, batch_index=0, bounds=pixel_bounds(ensemble.info, ensemble.device),
                        gen=gen, amp_dtype=None).x


@dataclass(frozen=True)
class ClaimsCheck:
    """What the check found: the claims as sent, as bounded, the agreement, and as used."""

    claimed: torch.Tensor  # [N, K] as the nodes sent them
    bounded: torch.Tensor  # [N, K] after `bound_claims`
    agreement: torch.Tensor  # [N, K] `peer_agreement` (NaN: untested)
    scores: torch.Tensor  # [N] `node_scores` (NaN: nothing tested)
    used: torch.Tensor  # [N, K] what the ensemble weighs by

    @property
    def dropped(self) -> list[int]:
        return [i for i in range(len(self.used)) if float(self.used[i].sum()) == 0 and float(self.claimed[i].sum()) > 0]

    def changes(self) -> list[str]:
        """One line per node whose weight the check changed."""
        lines, dropped = [], self.dropped
        for i in range(len(self.claimed)):
            claimed, used = float(self.claimed[i].sum()), float(self.used[i].sum())
            if i in dropped:
                lines.append(f"node {i} dropped: its teacher agrees with the others' on {self.scores[i]:.2f} of "
                             f"what it claims, under {DROP_RATIO} x the median node's {self.scores.nanmedian():.2f}")
            elif used < claimed:
                lines.append(f"node {i} down-weighted: claims {claimed:.0f} samples, over {MAX_RATIO:g} x the "
                             f"median node's; counted as {used:.0f}")
        return lines

    def record(self) -> dict[str, Any]:
        """JSON form (NaN as null) for reports and the store."""
        def finite(rows: list) -> list:
            return [finite(r) if isinstance(r, list) else (None if r != r else round(r, 4)) for r in rows]
        return {"claimed": self.claimed.tolist(), "used": self.used.tolist(), "dropped": self.dropped,
                "agreement": finite(self.agreement.tolist()), "scores": finite(self.scores.tolist()),
                "changes": self.changes()}


def check_claims(ensemble: Any, seed: int, per_class: int | None = None,
                 iterations: int | None = None) -> ClaimsCheck:
    """Hold the ensemble's label counts to both tests (module docstring); logs each change. The
    ensemble is left as it was (`apply_claims` makes it use the result)."""
    claimed = ensemble.counts.cpu()
    bounded = bound_claims(claimed)
    x = probe_images(ensemble, seed, per_class or PROBE_PER_CLASS, iterations or PROBE_ITERATIONS)
    logits = ensemble.logits(x).float().cpu()  # no_grad
    agreement = peer_agreement(logits, bounded)
    scores = node_scores(agreement, bounded)
    check = ClaimsCheck(claimed, bounded, agreement, scores, keep_nodes(bounded, scores))
    for line in check.changes():
        log.warning("claims check: %s", line)
    return check


def apply_claims(ensemble: Any, claims: str, seed: int) -> ClaimsCheck | None:
    """Weigh the ensemble's teachers as `claims` says: "trusted", by the label counts as sent;
    "checked", by what stands of them after `check_claims` (returned); "median", claims ignored (every
    head open, equal weights) and per class the median of the teachers' probabilities."""
    if claims not in CLAIMS:
        raise ValueError(f"claims must be one of {', '.join(CLAIMS)}, got {claims!r}")
    if claims == "median":
        ignore_claims(ensemble)
    if claims != "checked":
        return None
    check = check_claims(ensemble, seed)
    ensemble.use_counts(check.used)
    return check


def ignore_claims(ensemble: Any) -> None:
    """Every teacher speaks for every class, and the ensemble is the per-class median."""
    ensemble.use_counts(torch.ones_like(ensemble.counts))
    ensemble.median = True


def use_store_claims(ensemble: Any, meta: dict[str, Any], store: Any) -> None:
    """Make the ensemble weigh its teachers as the synthesis that made a store did: by the median
    when it ignored the claims, by what stood of them when the store records a claims check of these
    teachers' claims (`StoreWriter.record_claims`)."""
    if (meta.get("config") or {}).get("claims") == "median":
        ignore_claims(ensemble)
        return
    check = meta.get("claims")
    if not check:
        return
    claimed = torch.tensor(check["claimed"], dtype=torch.float64)
    if claimed.shape != ensemble.counts.shape or not torch.equal(claimed, ensemble.counts.double().cpu()):
        log.warning("%s records a claims check of other teachers; these are weighed by their claims as sent", store)
        return
    ensemble.use_counts(torch.tensor(check["used"], dtype=torch.float64))
    for line in check["changes"]:
        log.info("claims as checked by the synthesis: %s", line)
