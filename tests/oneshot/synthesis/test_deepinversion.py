"""Tests of fedinv.oneshot.synthesis.deepinversion."""

import torch

from fedinv.oneshot.synthesis.config import SynthesisConfig
from fedinv.oneshot.synthesis.deepinversion import invert_batch, pixel_bounds
from fedinv.oneshot.synthesis.ensemble import TeacherEnsemble
from tests.helpers import INFO, random_teachers


def test_invert_batch_lowers_the_loss_stays_in_range_and_is_reproducible():
    models, counts = random_teachers(3)
    ts = TeacherEnsemble(models, counts, torch.device("cpu"), INFO)
    cfg = SynthesisConfig.of(iterations=25, batch_size=8, lr=0.05, teachers_per_step=2, device="cpu")
    bounds = pixel_bounds(INFO, torch.device("cpu"))
    y = torch.arange(8) % 10
    seen = []
    run = lambda: invert_batch(ts, y, cfg, batch_index=0, bounds=bounds, gen=torch.Generator().manual_seed(1),  # noqa
                               amp_dtype=None, on_step=lambda step, losses: seen.append(losses["loss"]),
                               log_every=1)
    a = run()
    assert seen[-1] < seen[0]
    lo, hi = bounds
    assert (a.x >= lo - 1e-6).all() and (a.x <= hi + 1e-6).all()
    b = run()
    assert torch.equal(a.x, b.x)
    assert a.teacher_mask == 0b111
