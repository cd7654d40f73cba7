"""Tests of fedinv.oneshot.synthesis.ensemble."""

import pytest
import torch

from fedinv.models import build_model
from fedinv.oneshot.synthesis.config import SynthesisConfig
from fedinv.oneshot.synthesis.deepinversion import invert_batch, pixel_bounds
from fedinv.oneshot.synthesis.ensemble import TeacherEnsemble
from tests.helpers import INFO, random_teachers


@pytest.mark.parametrize("head_mask,weighted", [(False, False), (True, False), (True, True)])
def test_batched_and_looped_paths_agree(head_mask, weighted):
    models, counts = random_teachers(4)
    batched = TeacherEnsemble(models, counts, torch.device("cpu"), INFO, batched=True)
    looped = TeacherEnsemble(models, counts, torch.device("cpu"), INFO, batched=False)
    x = torch.randn(16, 3, 16, 16, requires_grad=True)
    y = torch.randint(0, 10, (16,))
    idx = torch.tensor([0, 1, 3])
    seen, weight = batched.masks(head_mask, weighted)
    student = torch.randn(16, 10)
    a = batched.terms(x, y, idx, seen, weight, student)
    b = looped.terms(x, y, idx, seen, weight, student)
    assert a.shape == (3, 3)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    ga, = torch.autograd.grad(a.sum(), x)
    gb, = torch.autograd.grad(b.sum(), x)
    torch.testing.assert_close(ga, gb, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(batched.ensemble_probs(x), looped.ensemble_probs(x))


def test_masking_and_weighting_change_what_they_should():
    models, counts = random_teachers(3)
    ts = TeacherEnsemble(models, counts, torch.device("cpu"), INFO)
    x = torch.randn(8, 3, 16, 16)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])  # labels teacher 0 never saw
    idx = torch.tensor([0, 1])
    masked = ts.terms(x, y, idx, *ts.masks(True, False))
    plain = ts.terms(x, y, idx, *ts.masks(False, False))
    assert masked[0, 0].item() == 0.0 and plain[0, 0].item() > 0, "teacher 0 knows none of these labels"
    assert masked[1, 0].item() == pytest.approx(plain[1, 0].item()), "teacher 1 saw every label: mask is a no-op"
    torch.testing.assert_close(masked[:, 1], plain[:, 1]), "BN terms do not depend on labels"
    weighted = ts.terms(x, y, idx, *ts.masks(True, True))
    assert weighted[1, 0].item() < masked[1, 0].item(), "eq. 5 shares are < 1"


@pytest.mark.parametrize("with_student", [False, True])
def test_engine_paths_give_the_same_images(with_student):
    """The looped path back-propagates teacher by teacher, the batched one once: same gradients."""
    models, counts = random_teachers(3)
    student = build_model("lenet5", 3, 10, 16).eval() if with_student else None
    cfg = SynthesisConfig.of(iterations=5, batch_size=8, teachers_per_step=2, device="cpu", a_tv_l1=0.1, a_l2=0.01)
    bounds = pixel_bounds(INFO, torch.device("cpu"))
    out = []
    for batched in (True, False):
        ts = TeacherEnsemble([m for m in models], counts, torch.device("cpu"), INFO, batched=batched)
        out.append(invert_batch(ts, torch.arange(8), cfg, batch_index=0, bounds=bounds,
                                gen=torch.Generator().manual_seed(3), amp_dtype=None, student=student))
    torch.testing.assert_close(out[0].x, out[1].x, rtol=1e-4, atol=1e-5)
    assert out[0].losses == pytest.approx(out[1].losses, rel=1e-4, abs=1e-6)
