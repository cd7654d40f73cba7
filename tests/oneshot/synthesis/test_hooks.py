"""Tests of fedinv.oneshot.synthesis.hooks."""

import pytest
import torch

from fedinv.oneshot.synthesis.hooks import BNMomentum, BNStatistics
from fedinv.oneshot.synthesis.losses import channel_stats


def test_bn_momentum_blends_and_averages_by_hand():
    m = BNMomentum(0.9, 2)
    assert m.blender(0) is None, "a teacher's first batch is compared as it is"
    m.update(0, [(torch.tensor([1.0]), torch.tensor([2.0]))])
    m.update(0, [(torch.tensor([3.0]), torch.tensor([4.0]))])
    (mean, var), = m.average[0]
    assert mean.item() == pytest.approx(0.9 * 1 + 0.1 * 3) and var.item() == pytest.approx(0.9 * 2 + 0.1 * 4)
    means, variances = m.blender(0)([torch.tensor([10.0])], [torch.tensor([20.0])])
    assert means[0].item() == pytest.approx(0.1 * 10 + 0.9 * 1.2)
    assert variances[0].item() == pytest.approx(0.1 * 20 + 0.9 * 2.2)
    copy = BNMomentum(0.9, 2)
    copy.load_state_dict(m.state_dict())
    assert copy.average[1] is None and torch.equal(copy.average[0][0][0], m.average[0][0][0])


def test_bn_hook_collects_input_stats_and_removes_itself():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2), torch.nn.ReLU(),
                                torch.nn.Conv2d(2, 3, 3), torch.nn.BatchNorm2d(3)).eval()
    x = torch.randn(4, 1, 8, 8)
    with BNStatistics(model) as stats:
        model(x)
    assert len(stats) == 2
    h = model[0](x)
    torch.testing.assert_close(stats[0].mean, h.mean((0, 2, 3)))
    torch.testing.assert_close(stats[0].var, h.var((0, 2, 3), unbiased=False))
    assert stats[1].running_var is model[4].running_var
    assert all(not m._forward_pre_hooks for m in model.modules()), "hooks must be gone after the block"
    model(x)
    assert len(stats) == 2


def test_channel_stats_gradient_matches_var_mean():
    torch.manual_seed(0)
    x = torch.randn(6, 3, 5, 4, dtype=torch.float64, requires_grad=True)
    mean, var = channel_stats(x)
    ref_var, ref_mean = torch.var_mean(x, dim=(0, 2, 3), unbiased=False)
    torch.testing.assert_close(mean.double(), ref_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(var.double(), ref_var, rtol=1e-5, atol=1e-6)
    w = torch.randn(3, dtype=torch.float64)
    g, = torch.autograd.grad((mean * w).sum() + var.pow(2).sum(), x)
    g_ref, = torch.autograd.grad((ref_mean * w).sum() + ref_var.pow(2).sum(), x)
    torch.testing.assert_close(g.double(), g_ref, rtol=1e-4, atol=1e-6)
