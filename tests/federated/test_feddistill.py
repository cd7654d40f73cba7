"""Tests of fedinv.federated.feddistill."""

import pytest
import torch

from fedinv.federated.config import FederateConfig
from fedinv.federated.feddistill import DistillParams, FedDistill
from fedinv.federated.local import cpu_state, head_of
from fedinv.federated.rounds import mean_node_metrics


def test_feddistill_personal_accuracy_is_on_each_nodes_own_classes(tiny_train):
    """The paper's Local Node Acc: a node's personal model answers for the classes it was trained on."""
    info, test = tiny_train.info, tiny_train
    algo = FedDistill(FederateConfig(algorithm="feddistill", model="lenet5", device="cpu"), DistillParams(), info)

    def always(label):  # a personal model that predicts `label` for every image
        model = algo.personal_model(0, None, torch.device("cpu"))
        head = head_of(model)
        with torch.no_grad():
            head.weight.zero_()
            head.bias.zero_()
            head.bias[label] = 1.0
        return {"personal": cpu_state(model)}

    counts = torch.zeros(3, info.num_classes, dtype=torch.long)
    counts[0, [0, 1]] = 7  # node 0 holds classes 0 and 1, predicts 0
    counts[1, 2] = 4  # node 1 holds class 2 only, predicts 2
    n = torch.bincount(test.labels, minlength=info.num_classes).double()
    def evaluate(states):  # as a run reports them: each metric's mean over the nodes that report it
        return mean_node_metrics([algo.evaluate_node(k, s, test, torch.device("cpu"), counts[k])
                                  for k, s in sorted(states.items())])

    got = evaluate({0: always(0), 1: always(2), 2: {}})
    assert got["personal_accuracy"] == pytest.approx((n[0] / (n[0] + n[1]) + 1.0).item() / 2, rel=1e-5)
    assert got["personal_accuracy_all_classes"] == pytest.approx(((n[0] + n[2]) / n.sum()).item() / 2, rel=1e-5)
    assert evaluate({}) == {}
