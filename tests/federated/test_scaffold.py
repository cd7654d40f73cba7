"""Tests of fedinv.federated.scaffold."""

import pytest
import torch

from fedinv.aggregate import scaffold_aggregate
from fedinv.federated.rounds import participants
from fedinv.federated.scaffold import scaffold_control_update
from tests.helpers import t


def test_scaffold_control_update_by_hand():
    c_i, c = {"w": t(1.0)}, {"w": t(0.5)}
    new = scaffold_control_update(c_i, c, {"w": t(2.0)}, {"w": t(1.0)}, steps=4, lr=0.5)
    assert new["w"].item() == pytest.approx(1.0 - 0.5 + (2.0 - 1.0) / (4 * 0.5))


def test_scaffold_server_c_stays_the_mean_of_all_node_controls():
    torch.manual_seed(0)
    n = 5
    c = {"w": torch.zeros(3)}
    c_nodes = [{"w": torch.zeros(3)} for _ in range(n)]
    g = {"w": torch.zeros(3)}
    for rnd in range(6):
        who = participants(n, 0.4, 0, rnd)
        deltas, states = [], []
        for k in who:
            new_ck = {"w": torch.randn(3)}
            deltas.append({"w": new_ck["w"] - c_nodes[k]["w"]})
            c_nodes[k] = new_ck
            states.append({"w": torch.randn(3)})
        g, c = scaffold_aggregate(g, states, [1.0] * len(who), c, deltas, n)
        assert torch.allclose(c["w"], torch.stack([ck["w"] for ck in c_nodes]).mean(0), atol=1e-6)
        assert torch.allclose(g["w"], torch.stack([s["w"] for s in states]).mean(0), atol=1e-6)
