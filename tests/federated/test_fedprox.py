"""Tests of fedinv.federated.fedprox."""

import math

import pytest

from fedinv.federated.fedprox import proximal_term
from fedinv.federated.moon import contrastive_loss
from tests.helpers import t


def test_proximal_term_and_contrastive_loss_by_hand():
    assert proximal_term({"a": t(1.0, 2.0)}, {"a": t(0.0, 0.0)}).item() == pytest.approx(5.0)
    z, zg, zp = t(1.0, 0.0)[None], t(1.0, 0.0)[None], t(0.0, 1.0)[None]
    tau = 0.5
    expected = -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + math.exp(0 / tau)))
    assert contrastive_loss(z, zg, zp, tau).item() == pytest.approx(expected, rel=1e-5)
