"""Tests of fedinv.oneshot.student.objective."""

import math

import pytest
import torch

from fedinv.errors import ConfigError
from fedinv.oneshot.student.config import StudentConfig
from fedinv.oneshot.student.objective import student_objective
from fedinv.train.objectives import confidence_kd_loss, hard_kd_loss, kd_loss


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


def test_confidence_kd_is_hard_where_the_teacher_is_sure_and_soft_where_it_is_not():
    torch.manual_seed(0)
    s = torch.randn(4, 3)
    sure = torch.tensor([[0.0, 60.0, 0.0]] * 4)  # p = 1: CE on label 1
    assert confidence_kd_loss(s, sure, 4.0).item() == pytest.approx(hard_kd_loss(s, sure).item(), rel=1e-5)
    doubt = torch.zeros(4, 3)  # p = 1/3, argmax 0: one third CE, two thirds KD
    mixed = (hard_kd_loss(s, doubt) + 2 * kd_loss(s, doubt, 4.0)) / 3
    assert confidence_kd_loss(s, doubt, 4.0).item() == pytest.approx(mixed.item(), rel=1e-5)
    model, x = torch.nn.Linear(3, 3), torch.randn(4, 3)
    out = student_objective(model, x, torch.zeros(4, dtype=torch.long), doubt, StudentConfig(kd_form="confidence"))
    assert out["kd"].item() == pytest.approx(confidence_kd_loss(model(x), doubt, 4.0).item())


def test_ods_moves_every_pixel_by_eta_along_the_sign_of_a_random_output_direction():
    from fedinv.oneshot.student.objective import ods_perturb
    from fedinv.oneshot.synthesis.ensemble import TeacherEnsemble
    from tests.helpers import CPU, INFO, random_teachers
    models, counts = random_teachers(2)
    ts = TeacherEnsemble(models, counts, CPU, INFO, batched=False)
    x = torch.randn(4, *INFO.image_shape)
    a = ods_perturb(ts, x, 0.05, INFO.std, torch.Generator().manual_seed(0))
    b = ods_perturb(ts, x, 0.05, INFO.std, torch.Generator().manual_seed(0))
    c = ods_perturb(ts, x, 0.05, INFO.std, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, c)
    step = (a - x).abs() * torch.tensor(INFO.std).view(1, -1, 1, 1)
    assert torch.allclose(step[step > 0], torch.full_like(step[step > 0], 0.05), atol=1e-5)
    assert (step > 0).float().mean() > 0.9  # the gradient reaches nearly every pixel
    with pytest.raises(ConfigError, match="ods_eta perturbs the images"):
        StudentConfig(ods_eta=0.03, kd_source="soft-labels")
