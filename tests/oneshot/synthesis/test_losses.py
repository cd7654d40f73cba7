"""Tests of fedinv.oneshot.synthesis.losses."""

import math

import pytest
import torch

from fedinv.oneshot.synthesis.losses import (bn_stat_loss, channel_stats, competition_loss, js_divergence, l2_prior,
                                             masked_cross_entropy, tv_l1, tv_l2)


def test_cross_entropy_by_hand():
    logits, y = torch.tensor([[2.0, 0.0, 1.0]]), torch.tensor([0])
    plain = -math.log(math.exp(2) / (math.exp(2) + 1 + math.exp(1)))
    assert masked_cross_entropy(logits, y).item() == pytest.approx(plain, rel=1e-6)
    seen = torch.tensor([True, False, True])  # head 1 masked out of the softmax
    masked = -math.log(math.exp(2) / (math.exp(2) + math.exp(1)))
    assert masked_cross_entropy(logits, y, seen).item() == pytest.approx(masked, rel=1e-6)
    weight = torch.tensor([0.25, 0.5, 0.25])
    assert masked_cross_entropy(logits, y, seen, weight).item() == pytest.approx(0.25 * masked, rel=1e-6)


def test_masking_drops_unseen_heads_and_unseen_targets():
    logits = torch.randn(4, 3, requires_grad=True)
    y = torch.tensor([0, 1, 2, 0])
    seen = torch.tensor([True, False, True])
    loss = masked_cross_entropy(logits, y, seen)
    (grad,) = torch.autograd.grad(loss, logits)
    assert (grad[:, 1] == 0).all(), "a masked head gets no gradient"
    assert (grad[1] == 0).all(), "a sample whose label the teacher never saw carries no loss"
    keep = [0, 2, 3]
    by_hand = torch.nn.functional.cross_entropy(logits[keep][:, [0, 2]], torch.tensor([0, 1, 0]), reduction="sum") / 4
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-6)


def test_label_weights_scale_each_sample():
    logits, y = torch.randn(6, 4), torch.tensor([0, 0, 1, 1, 2, 3])
    w = torch.tensor([1.0, 0.0, 2.0, 0.0])
    ce = torch.nn.functional.cross_entropy(logits, y, reduction="none")
    expected = (ce * w[y]).sum() / 6
    assert masked_cross_entropy(logits, y, weight=w).item() == pytest.approx(expected.item(), rel=1e-6)


def test_bn_stat_loss_by_hand():
    means, variances = [torch.tensor([1.0, 2.0]), torch.tensor([3.0])], [torch.tensor([1.0, 1.0]), torch.tensor([2.0])]
    rmeans, rvars = [torch.zeros(2), torch.tensor([3.0])], [torch.tensor([1.0, 3.0]), torch.tensor([1.0])]
    layer0 = math.sqrt(5) + 2.0
    layer1 = 0.0 + 1.0
    assert bn_stat_loss(means, variances, rmeans, rvars).item() == pytest.approx(layer0 + layer1)
    weighted = bn_stat_loss(means, variances, rmeans, rvars, first_multiplier=10)
    assert weighted.item() == pytest.approx(10 * layer0 + layer1)


def test_channel_stats_biased():
    x = torch.tensor([1.0, 3.0]).view(2, 1, 1, 1)
    mean, var = channel_stats(x)
    assert mean.item() == 2.0 and var.item() == 1.0


def test_total_variation_and_l2_by_hand():
    x = torch.tensor([[0.0, 1.0], [2.0, 3.0]]).view(1, 1, 2, 2)
    # right: -1, -1; down: -2, -2; anti-diagonal: 2 - 1 = 1; diagonal: 0 - 3 = -3
    assert tv_l1(x).item() == pytest.approx(1 + 2 + 1 + 3)
    assert tv_l2(x).item() == pytest.approx(math.sqrt(2) + math.sqrt(8) + 1 + 3)
    assert l2_prior(x).item() == pytest.approx(math.sqrt(0 + 1 + 4 + 9))


def test_js_divergence_by_hand():
    p, q = torch.tensor([[0.5, 0.5]]), torch.tensor([[0.8, 0.2]])
    m = [0.65, 0.35]
    kl = lambda a, b: sum(ai * math.log(ai / bi) for ai, bi in zip(a, b))  # noqa: E731
    expected = 0.5 * kl([0.5, 0.5], m) + 0.5 * kl([0.8, 0.2], m)
    assert js_divergence(p, q).item() == pytest.approx(expected, rel=1e-6)
    assert js_divergence(p, p).item() == pytest.approx(0.0, abs=1e-7)
    # clamping to [0.01, 0.99] keeps a one-hot finite
    assert math.isfinite(js_divergence(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])).item())


def test_competition_is_one_minus_js_at_temperature():
    t, s = torch.tensor([[3.0, 0.0]]), torch.tensor([[0.0, 3.0]])
    p, q = torch.softmax(t / 3, 1), torch.softmax(s / 3, 1)
    assert competition_loss(t, s).item() == pytest.approx(1 - js_divergence(p, q).item(), rel=1e-6)
    assert competition_loss(t, t).item() == pytest.approx(1.0)
