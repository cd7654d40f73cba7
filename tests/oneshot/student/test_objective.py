"""Tests of fedinv.oneshot.student.objective."""

import math

import pytest
import torch

from fedinv.errors import ConfigError
from fedinv.oneshot.student.config import StudentConfig
from fedinv.oneshot.student.objective import student_objective
from fedinv.train.objectives import hard_kd_loss, kd_loss


def test_kd_loss_by_hand():
    s, t, T = torch.tensor([[1.0, 0.0, -1.0]]), torch.tensor([[0.0, 2.0, 0.0]]), 2.0
    p = [math.exp(v / T) for v in (0.0, 2.0, 0.0)]
    p = [v / sum(p) for v in p]
    q = [math.exp(v / T) for v in (1.0, 0.0, -1.0)]
    q = [v / sum(q) for v in q]
    expected = T * T * sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    assert kd_loss(s, t, T).item() == pytest.approx(expected, rel=1e-5)
    assert kd_loss(t, t, T).item() == pytest.approx(0.0, abs=1e-6)
    # log-probabilities as targets give the same loss as the logits they came from
    assert kd_loss(s, t.log_softmax(1), T).item() == pytest.approx(kd_loss(s, t, T).item(), rel=1e-5)


def test_hard_kd_is_cross_entropy_on_the_teachers_label():
    s = torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.2, 3.0]])
    t = torch.tensor([[0.0, 2.0, 0.0], [-1.0, 0.0, -5.0]])  # labels 1 and 1
    by_hand = -(s.log_softmax(1)[0, 1] + s.log_softmax(1)[1, 1]) / 2
    assert hard_kd_loss(s, t).item() == pytest.approx(by_hand.item(), rel=1e-6)
    assert hard_kd_loss(s, t.log_softmax(1)).item() == pytest.approx(by_hand.item(), rel=1e-6)
    torch.manual_seed(0)
    model, x = torch.nn.Linear(4, 3), torch.randn(5, 4)
    targets = torch.randn(5, 3)
    y = torch.zeros(5, dtype=torch.long)  # the stored label plays no part in the KD term
    hard = student_objective(model, x, y, targets, StudentConfig(kd_form="hard", temperature=7.0))
    assert hard["kd"].item() == pytest.approx(torch.nn.functional.cross_entropy(model(x), targets.argmax(1)).item())
    soft = student_objective(model, x, y, targets, StudentConfig(temperature=7.0))
    assert soft["kd"].item() == pytest.approx(kd_loss(model(x), targets, 7.0).item())
    with pytest.raises(ConfigError, match="soft, hard"):
        StudentConfig(kd_form="argmax")
