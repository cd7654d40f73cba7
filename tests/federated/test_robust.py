"""Simulated dishonest nodes (fedinv.attacks) and robust aggregation in the multi-round mode."""

import dataclasses

import pytest
import torch

from fedinv.attacks import AttackConfig, flip_labels, inflate_counts, is_bn_statistic, random_with_statistics
from fedinv.errors import ConfigError
from fedinv.federated.config import FederatedRunConfig
from fedinv.federated.rounds import Federation, federate, node_data
from tests.helpers import tiny_run


def test_attack_functions_by_hand():
    assert flip_labels(torch.tensor([0, 1, 9]), 10).tolist() == [9, 8, 0]
    assert inflate_counts(torch.tensor([0, 3, 6]), 10.0).tolist() == [30, 30, 30]  # 10 x 9 samples, every class
    fresh = {"conv.weight": torch.zeros(2), "bn.running_mean": torch.zeros(2),
             "bn.num_batches_tracked": torch.tensor(0)}
    trained = {"conv.weight": torch.ones(2), "bn.running_mean": torch.ones(2),
               "bn.num_batches_tracked": torch.tensor(5)}
    out = random_with_statistics(fresh, trained)
    assert out["conv.weight"].sum() == 0 and out["bn.running_mean"].sum() == 2 and out["bn.num_batches_tracked"] == 5
    assert is_bn_statistic("layer.bn.running_var") and not is_bn_statistic("layer.bn.weight")
    with pytest.raises(ValueError, match="different models"):
        random_with_statistics({"a": torch.zeros(1)}, trained)


def update(cfg, tiny_train, k):
    fed, data = Federation(cfg, tiny_train.info), node_data(cfg, tiny_train)
    global_state, server_state = fed.initial_states()
    return fed.node_update(k, 0, data.splits[k], data.counts[k], global_state, {}, fed.broadcast(server_state)), data


@pytest.mark.parametrize("kind", ["inflate", "flip", "random"])
def test_a_dishonest_node_sends_what_its_attack_says_and_the_others_stay_honest(tiny_train, kind):
    honest_cfg = tiny_run()
    cfg = dataclasses.replace(honest_cfg, attack=AttackConfig(kind=kind, factor=100.0))
    honest, data = update(honest_cfg, tiny_train, 0)
    lying, _ = update(cfg, tiny_train, 0)
    other_honest, _ = update(honest_cfg, tiny_train, 1)
    other, _ = update(cfg, tiny_train, 1)
    assert all(torch.equal(other.state[k], other_honest.state[k]) for k in other.state)  # node 1 is honest
    counts = data.counts[0]
    if kind == "inflate":
        assert lying.num_samples == 100 * honest.num_samples
        assert lying.label_counts.tolist() == inflate_counts(counts, 100.0).tolist()
        assert all(torch.equal(lying.state[k], honest.state[k]) for k in honest.state)
    if kind == "flip":
        assert lying.label_counts.tolist() == counts.flip(0).tolist()  # k -> K-1-k, reported as trained on
        assert any(not torch.equal(lying.state[k], honest.state[k]) for k in honest.state)
    if kind == "random":
        assert lying.label_counts.tolist() == counts.tolist()
        for k in honest.state:
            assert torch.equal(lying.state[k], honest.state[k]) == is_bn_statistic(k), k


@pytest.mark.parametrize("algorithm,aggregation", [("fedavg", "median"), ("feddyn", "trimmed-mean"),
                                                   ("scaffold", "krum"), ("fedprox", "multi-krum")])
def test_robust_aggregation_runs_every_averaging_algorithm(tmp_path, tiny_train, algorithm, aggregation):
    cfg = tiny_run(algorithm, participation=1.0, aggregation=aggregation, trim=0.25, byzantine=0)
    report = federate(dataclasses.replace(cfg, attack=AttackConfig(kind="random")), tmp_path, progress=False,
                      train=tiny_train)
    assert report["complete"] and 0.0 <= report["final_accuracy"] <= 1.0
    saved = FederatedRunConfig.from_dict(report["config"])
    assert saved.federate.aggregation == aggregation and saved.attack.kind == "random"


def test_a_run_with_multi_krum_says_which_participant_it_left_out(tmp_path, tiny_train):
    base = tiny_run(participation=1.0)  # 5 nodes: multi-Krum with f = 1 needs more than 4 a round
    cfg = dataclasses.replace(base, partition=dataclasses.replace(base.partition, num_nodes=5),
                              federate=dataclasses.replace(base.federate, aggregation="multi-krum", byzantine=1,
                                                           krum_threshold=2.0))
    report = federate(dataclasses.replace(cfg, attack=AttackConfig(kind="random")), tmp_path, progress=False,
                      train=tiny_train)
    assert [row["left_out"] for row in report["history"]] == [[0], [0]]  # node 0 sends random weights
    assert report["left_out"] == {"0": [2, 2]}  # left out in both rounds it took part in
    honest = federate(tiny_run(), tmp_path / "mean", progress=False, train=tiny_train)
    assert "left_out" not in honest and all("left_out" not in row for row in honest["history"])


def test_robust_aggregation_config_errors():
    with pytest.raises(ConfigError, match="aggregation must be mean"):
        tiny_run("feddistill-query", aggregation="median")
    with pytest.raises(ConfigError, match="trim"):
        tiny_run(trim=0.5)
    with pytest.raises(ConfigError, match="size_cap = 0.5: 0 .no cap. or at least 1"):
        tiny_run(size_cap=0.5)
    with pytest.raises(ConfigError, match="krum with byzantine = 1 needs more than 4 participants a round, and "
                                          "participation 1.0 of 4 nodes gives 4"):
        tiny_run(participation=1.0, aggregation="krum", byzantine=1)  # refused before any round, not in round 1
    with pytest.raises(ConfigError, match="inflate"):
        AttackConfig(kind="lie")
