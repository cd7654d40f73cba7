"""Multi-round mode: aggregation rules against hand computations, the FedFTG pieces against
hand-built counts, two rounds of every method on synthetic-tiny, and resume after a stop."""

import dataclasses
import json
import math

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from fedinv.aggregate import apply_server_lr, feddyn_aggregate, scaffold_aggregate
from fedinv.cli.main import cli
from fedinv.config import DataConfig, PartitionConfig
from fedinv.errors import ConfigError, RunStateError
from fedinv.evaluate import class_level_logits
from fedinv.federated.config import FederateConfig, FederatedRunConfig, GeneratorConfig
from fedinv.federated.feddistill import DistillParams, FedDistill, QueryParams
from fedinv.federated.fedprox import proximal_term
from fedinv.federated.ftg import (FedFTG, FTGParams, ServerModels, diversity_loss, ema_update, generator_objective,
                                  label_distribution, label_level_teacher)
from fedinv.federated.local import LocalResult, RoundInfo, cpu_state, head_of
from fedinv.federated.moon import contrastive_loss
from fedinv.federated.registry import server_step_class
from fedinv.federated.rounds import (Federation, federate, mean_last_accuracy, mean_node_metrics, participants,
                                     rounds_to_target)
from fedinv.federated.scaffold import scaffold_control_update
from fedinv.models import build_model_for
from fedinv.models.generators import FeatureGenerator, ImageGenerator
from fedinv.train.resume import changes


def t(*v):
    return torch.tensor(v, dtype=torch.float32)


def test_server_step_moves_by_the_server_lr():
    g, avg = {"w": t(1.0, 2.0), "n": torch.tensor(3)}, {"w": t(3.0, 0.0), "n": torch.tensor(5)}
    assert torch.allclose(apply_server_lr(g, avg, 1.0)["w"], t(3.0, 0.0))
    assert torch.allclose(apply_server_lr(g, avg, 0.5)["w"], t(2.0, 1.0))
    assert apply_server_lr(g, avg, 0.5)["n"] == 5


def test_feddyn_aggregate_by_hand():
    g = {"w": t(1.0), "bn": t(0.0)}
    states = [{"w": t(3.0), "bn": t(1.0)}, {"w": t(5.0), "bn": t(3.0)}]
    h = {"w": t(0.5)}
    alpha, n = 0.1, 4
    new, new_h = feddyn_aggregate(g, states, [1, 3], h, alpha, n)
    avg = 0.25 * 3 + 0.75 * 5  # 4.5
    h_expected = 0.5 - alpha * (2 / 4) * (avg - 1.0)  # 0.325
    assert new_h["w"].item() == pytest.approx(h_expected)
    assert new["w"].item() == pytest.approx(avg - h_expected / alpha)
    assert new["bn"].item() == pytest.approx(0.25 * 1 + 0.75 * 3)  # buffers: plain weighted average


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


def test_proximal_term_and_contrastive_loss_by_hand():
    assert proximal_term({"a": t(1.0, 2.0)}, {"a": t(0.0, 0.0)}).item() == pytest.approx(5.0)
    z, zg, zp = t(1.0, 0.0)[None], t(1.0, 0.0)[None], t(0.0, 1.0)[None]
    tau = 0.5
    expected = -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + math.exp(0 / tau)))
    assert contrastive_loss(z, zg, zp, tau).item() == pytest.approx(expected, rel=1e-5)


def test_ftg_label_sampler_and_class_level_ensemble_against_counts():
    counts = torch.tensor([[30, 0, 10], [10, 20, 0]])
    assert torch.allclose(label_distribution(counts), t(40, 20, 10) / 70)
    logits = torch.tensor([[[1.0, 2.0, 3.0]], [[5.0, 7.0, 11.0]]])  # [M=2, B=1, K=3]
    from fedinv.evaluate import class_shares
    shares = class_shares(counts)  # class 0: 3/4, 1/4; class 1: 0, 1; class 2: 1, 0
    out = class_level_logits(logits, shares)
    assert torch.allclose(out, t(0.75 * 1 + 0.25 * 5, 7.0, 3.0)[None])


def test_label_level_teacher_weighs_models_by_their_share_of_the_samples_label():
    counts = torch.tensor([[30, 0, 10], [10, 20, 0]])
    from fedinv.evaluate import class_shares
    shares = class_shares(counts)  # label 0: 3/4, 1/4; label 1: 0, 1; label 2: 1, 0
    logits = torch.tensor([[[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]], [[5.0, 7.0, 11.0], [1.0, 0.0, 0.0]]])  # [M=2, B=2, K=3]
    y = torch.tensor([0, 1])
    logp, fidelity = label_level_teacher(logits, shares, y)
    p = logits.softmax(-1)
    torch.testing.assert_close(logp.exp()[0], 0.75 * p[0, 0] + 0.25 * p[1, 0])  # label 0: both models
    torch.testing.assert_close(logp.exp()[1], p[1, 1])  # label 1: only model 1 holds it
    ce = -p.log()
    torch.testing.assert_close(fidelity, t(0.75 * ce[0, 0, 0] + 0.25 * ce[1, 0, 0], ce[1, 1, 1]))


def test_one_models_teacher_is_its_share_of_the_label_form():
    counts = torch.tensor([[30, 0, 10], [10, 20, 0]])
    from fedinv.evaluate import class_shares
    shares = class_shares(counts)
    models = [nn.Linear(4, 3), nn.Linear(4, 3)]
    server = ServerModels(models, shares, torch.full((3,), 1 / 3), by_label=True)
    x, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])
    each = [server.teach_one(m, x, y) for m in range(2)]
    torch.testing.assert_close(each[0]["md_weight"], t(0.75, 0.0, 1.0, 0.75, 0.0))  # model 0's share of y
    torch.testing.assert_close(each[1]["teacher_logp"], models[1](x).log_softmax(-1))
    torch.testing.assert_close(each[0]["fidelity"] + each[1]["fidelity"], server.teach(x, y)["fidelity"])
    glob = torch.randn(5, 3)
    kl = (each[0]["teacher_logp"].exp() * (each[0]["teacher_logp"] - glob.log_softmax(-1))).sum(-1)
    parts = generator_objective(global_logits=glob, noise=torch.randn(5, 2), output=torch.randn(5, 1),
                                lambda_md=1.0, lambda_div=0.0, num_models=2, **each[0])
    assert parts["hard_mining"].item() == pytest.approx((each[0]["md_weight"] * kl).mean().item(), rel=1e-5)


def test_diversity_loss_by_hand_and_generator_objective_signs():
    z = t(0.0, 0.0, 1.0, 1.0).view(2, 2)  # squared distance mean 1
    out = t(0.0, 2.0).view(2, 1)  # l1 distance 2
    # pairs (0,1) and (1,0) contribute 1*2 each, the diagonal 0: mean over 4 = 1
    assert diversity_loss(z, out).item() == pytest.approx(math.exp(-1.0))
    y = torch.tensor([0, 1])
    ens, glob = t(2.0, 0.0, 0.0, 2.0).view(2, 2), t(0.0, 0.0, 0.0, 0.0).view(2, 2)
    teacher = (ens.log_softmax(1), torch.nn.functional.cross_entropy(ens, y, reduction="none"))
    with_md = generator_objective(*teacher, glob, z, out, lambda_md=1.0, lambda_div=0.0, num_models=2)
    no_md = generator_objective(*teacher, glob, z, out, lambda_md=0.0, lambda_div=0.0, num_models=2)
    assert with_md["hard_mining"] > 0 and with_md["loss"] < no_md["loss"]  # mining rewards disagreement
    assert with_md["fidelity"].item() == pytest.approx(teacher[1].mean().item())


def test_generators_shapes():
    g = ImageGenerator(8, 10, 1, 28)
    x = g(torch.randn(4, 8), torch.tensor([0, 1, 2, 9]))
    assert x.shape == (4, 1, 28, 28) and x.abs().max() <= 1
    f = FeatureGenerator(8, 10, 32, hidden=16)
    assert f(torch.randn(4, 8), torch.tensor([0, 1, 2, 9])).shape == (4, 32)
    with pytest.raises(ConfigError, match="divisible by 4"):
        ImageGenerator(8, 10, 3, 30)


def test_ftg_fine_tuning_stays_finite_with_far_off_bn_statistics(tiny_train):
    """Regression: on Fashion-MNIST the round-1 fine-tuning diverged to NaN when the global model's BN
    normalized generated batches with its running statistics (eval mode): gradients scale with
    1 / sqrt(running var). Here the running variances are made tiny; the fine-tuning must stay
    finite, and the running statistics follow the generated batches."""
    info = tiny_train.info
    build = lambda: build_model_for("bncnn", info)  # noqa: E731
    torch.manual_seed(0)
    local = [build().state_dict() for _ in range(2)]
    global_state = build().state_dict()
    variances = [k for k in global_state if k.endswith("running_var")]
    assert len(variances) == 3
    for k in variances:
        global_state[k] = torch.full_like(global_state[k], 1e-4)
    cfg = FederateConfig(model="bncnn", server="ftg", device="cpu")
    gcfg = GeneratorConfig(iterations=3, batch_size=16, nz=16)
    server = FedFTG(cfg, gcfg, FTGParams(model_steps=5, model_lr=0.1), info, build)
    new, _, metrics = server.step(global_state, results_of(local), server.init_state(),
                                  RoundInfo(0, 2, torch.device("cpu"), None, torch.Generator().manual_seed(0)))
    assert all(math.isfinite(v) for v in metrics.values())
    assert all(torch.isfinite(v).all() for v in new.values() if v.is_floating_point())
    assert all((new[k] > 1e-3).all() for k in variances)


@pytest.mark.parametrize("bn_stats", ["batches", "aggregate", "eval"])
def test_ftg_bn_stats_follow_the_batches_or_stay_the_aggregates(tiny_train, bn_stats):
    info = tiny_train.info
    build = lambda: build_model_for("bncnn", info)  # noqa: E731
    torch.manual_seed(0)
    local, global_state = [build().state_dict() for _ in range(2)], build().state_dict()
    cfg = FederateConfig(model="bncnn", server="ftg", device="cpu")
    gcfg = GeneratorConfig(iterations=2, batch_size=16, nz=16)
    server = FedFTG(cfg, gcfg, FTGParams(model_steps=2, bn_stats=bn_stats), info, build)
    new, _, _ = server.step(global_state, results_of(local), server.init_state(),
                            RoundInfo(0, 2, torch.device("cpu"), None, torch.Generator().manual_seed(0)))
    stats = [k for k in global_state if k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    weights = [k for k in global_state if k not in stats]
    kept = all(torch.equal(new[k], global_state[k]) for k in stats)
    assert kept == (bn_stats != "batches")
    assert not all(torch.equal(new[k], global_state[k]) for k in weights)  # the fine-tuning did move the weights
    with pytest.raises(ConfigError, match="batches, aggregate, eval"):
        FTGParams(bn_stats="real")
    # the generator's steps see the global model in eval mode (the reference code's): alone, they
    # leave its statistics as they were
    server = FedFTG(cfg, gcfg, FTGParams(model_steps=0, bn_stats=bn_stats), info, build)
    new, _, _ = server.step(global_state, results_of(local), server.init_state(),
                            RoundInfo(0, 2, torch.device("cpu"), None, torch.Generator().manual_seed(0)))
    assert all(torch.equal(new[k], global_state[k]) for k in global_state)


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


def test_rounds_to_target():
    hist = [{"round": 1, "test_accuracy": 0.5}, {"round": 2}, {"round": 3, "test_accuracy": 0.82},
            {"round": 4, "test_accuracy": 0.86}]
    assert rounds_to_target(hist, 0.8) == 3 and rounds_to_target(hist, 0.85) == 4
    assert rounds_to_target(hist, 0.9) is None
    assert mean_last_accuracy(hist, 2) == pytest.approx((0.82 + 0.86) / 2)
    assert mean_last_accuracy(hist, 10) == pytest.approx((0.5 + 0.82 + 0.86) / 3)
    assert mean_last_accuracy([{"round": 1}], 5) is None


def tiny_run(algorithm="fedavg", server="none", rounds=2, **kw) -> FederatedRunConfig:
    step = server_step_class(server)
    return FederatedRunConfig(
        DataConfig("synthetic-tiny"), PartitionConfig(num_nodes=4, alpha=1.0),
        FederateConfig(algorithm=algorithm, server=server, model="lenet5", rounds=rounds, batch_size=32,
                       device="cpu", **kw),
        GeneratorConfig(iterations=2, batch_size=16, nz=16),
        QueryParams(validation_size=200) if algorithm == "feddistill-query" else None,
        step.Params(model_steps=2) if server in ("ftg", "feddf") else None)


def with_step(cfg: FederatedRunConfig, **settings) -> FederatedRunConfig:
    """`cfg` with these settings of its server step changed."""
    return dataclasses.replace(cfg, server_params=dataclasses.replace(cfg.server_params, **settings))


def results_of(states, counts=((5,) * 5 + (0,) * 5, (0,) * 5 + (5,) * 5)):
    return [LocalResult(s, 10, label_counts=torch.tensor(c)) for s, c in zip(states, counts)]


METHODS = [("fedavg", "none"), ("fedprox", "none"), ("feddyn", "none"), ("scaffold", "none"), ("moon", "none"),
           ("feddistill", "none"), ("feddistill-query", "none"), ("fedavg", "ftg"), ("scaffold", "ftg"),
           ("fedavg", "feddf"), ("fedavg", "fedgen")]


@pytest.mark.parametrize("algorithm,server", METHODS)
def test_two_rounds_of_every_method(tmp_path, tiny_train, algorithm, server):
    report = federate(tiny_run(algorithm, server), tmp_path, progress=False, train=tiny_train)
    assert report["complete"] and report["rounds"] == 2 and len(report["history"]) == 2
    assert 0.0 <= report["final_accuracy"] <= 1.0
    assert all(math.isfinite(r["local_loss"]) for r in report["history"])
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["round"] for line in lines] == [1, 2]
    assert (tmp_path / "global.pt").is_file() and (tmp_path / "report.json").is_file()
    if server in ("ftg", "feddf"):
        assert report["server_seconds_per_round"] > 0 and "server_distill" in report["history"][0]
    if algorithm == "feddistill":
        assert 0.0 <= report["personal_accuracy"] <= 1.0


def test_diagnose_records_the_ensemble_and_the_aggregate_before_the_server_step(tmp_path, tiny_train):
    from fedinv.data.datasets import load_dataset

    test = load_dataset("synthetic-tiny", "test")
    report = federate(tiny_run("fedavg", "ftg", diagnose_images=100), tmp_path, progress=False, train=tiny_train,
                      test=test)
    row = report["history"][-1]
    kinds = ("ensemble", "logit_ensemble", "aggregate", "global")
    assert all(0.0 <= row[f"diagnose_{k}_accuracy"] <= 1.0 for k in kinds)
    fed = Federation(tiny_run(), tiny_train.info)  # the aggregate's figure is its test accuracy on the subset
    from fedinv.checkpoint import GLOBAL, load_checkpoint
    state = load_checkpoint(tmp_path / "global.pt", kind=GLOBAL).state_dict
    assert fed.test_accuracy(state, test.subset(range(100))) == row["diagnose_global_accuracy"]
    plain = federate(tiny_run("fedavg"), tmp_path / "plain", progress=False, train=tiny_train, test=test)
    assert not any(k.startswith("diagnose") for k in plain["history"][-1])


@pytest.mark.parametrize("algorithm,server", [("scaffold", "ftg"), ("feddyn", "none"), ("feddistill", "none"),
                                              ("moon", "fedgen")])
def test_resume_after_a_stop_gives_the_same_model(tmp_path, tiny_train, algorithm, server):
    cfg = tiny_run(algorithm, server, rounds=3, participation=0.5)
    whole = federate(cfg, tmp_path / "whole", progress=False, train=tiny_train)
    part = federate(cfg, tmp_path / "split", progress=False, train=tiny_train, stop_after=1)
    assert not part["complete"] and not (tmp_path / "split" / "report.json").exists()
    with pytest.raises(RunStateError, match="--resume"):
        federate(cfg, tmp_path / "split", progress=False, train=tiny_train)
    resumed = federate(cfg, tmp_path / "split", resume=True, progress=False, train=tiny_train)
    a = torch.load(tmp_path / "whole" / "global.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "split" / "global.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["final_accuracy"] == whole["final_accuracy"]
    assert [r["round"] for r in resumed["history"]] == [1, 2, 3]


def test_a_finished_run_extends_to_more_rounds(tmp_path, tiny_train):
    whole = federate(tiny_run(rounds=3), tmp_path / "whole", progress=False, train=tiny_train)
    federate(tiny_run(rounds=2), tmp_path / "ext", progress=False, train=tiny_train)
    extended = federate(tiny_run(rounds=3), tmp_path / "ext", resume=True, progress=False, train=tiny_train)
    assert extended["complete"] and extended["rounds"] == 3
    a = torch.load(tmp_path / "whole" / "global.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "ext" / "global.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["round"] for r in extended["history"]] == [1, 2, 3]
    assert extended["final_accuracy"] == whole["final_accuracy"]
    with pytest.raises(RunStateError, match="already run 3 rounds"):
        federate(tiny_run(rounds=2), tmp_path / "ext", resume=True, progress=False, train=tiny_train)


def test_resume_refuses_another_config(tmp_path, tiny_train):
    federate(tiny_run(rounds=2), tmp_path, progress=False, train=tiny_train, stop_after=1)
    with pytest.raises(RunStateError, match="another config"):
        federate(tiny_run(rounds=2, lr=0.01), tmp_path, resume=True, progress=False, train=tiny_train)


def test_resume_accepts_a_checkpoint_from_before_a_new_config_field(tmp_path, tiny_train):
    """A field added to a config since the run started, left at its default, is no change."""
    federate(tiny_run(rounds=2), tmp_path, progress=False, train=tiny_train, stop_after=1)
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    del ckpt["config"]["generator"]["lambda_div"]
    torch.save(ckpt, tmp_path / "checkpoint.pt")
    report = federate(tiny_run(rounds=2), tmp_path, resume=True, progress=False, train=tiny_train)
    assert report["complete"] and [r["round"] for r in report["history"]] == [1, 2]
    cfg = tiny_run(rounds=3)
    changed = dataclasses.replace(cfg, generator=dataclasses.replace(cfg.generator, lambda_div=0.5))
    with pytest.raises(RunStateError, match="another config"):  # a non-default value is a change
        federate(changed, tmp_path, resume=True, progress=False, train=tiny_train)


def test_config_errors_name_the_options():
    with pytest.raises(ConfigError, match="known: fedavg, feddistill, feddistill-query, feddyn, fedprox, moon, scaffold"):
        FederateConfig(algorithm="fedsgd")
    with pytest.raises(ConfigError, match="known: feddf, fedgen, ftg, none"):
        FederateConfig(server="ftgg")
    with pytest.raises(ConfigError, match="participation"):
        FederateConfig(participation=0)


def test_federate_cli_and_report(tmp_path):
    cfg = tmp_path / "fl.toml"
    cfg.write_text('[data]\ndataset = "synthetic-tiny"\n[partition]\nnum_nodes = 3\nalpha = 1.0\n'
                   '[federate]\nmodel = "lenet5"\nrounds = 2\nbatch_size = 32\nserver = "ftg"\n'
                   '[generator]\niterations = 1\nbatch_size = 8\n')
    res = CliRunner().invoke(cli, ["-q", "federate", str(cfg), "--out", str(tmp_path / "a"), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["rounds"] == 2
    res = CliRunner().invoke(cli, ["-q", "federate", str(cfg), "--out", str(tmp_path / "a"), "--no-progress"])
    assert res.exit_code == 2 and "--resume" in res.output
    res = CliRunner().invoke(cli, ["-q", "federate-report", str(tmp_path / "a"), "--out", str(tmp_path / "cmp"),
                                   "--target", "0.1"])
    assert res.exit_code == 0, res.output
    table = (tmp_path / "cmp" / "table.md").read_text()
    assert "fedavg+ftg" in table and (tmp_path / "cmp" / "accuracy.png").is_file()
    res = CliRunner().invoke(cli, ["-q", "evaluate", str(tmp_path / "a" / "global.pt"), "--device", "cpu",
                                   "--out", str(tmp_path / "eval.json")])
    assert res.exit_code == 0, res.output  # the global model records its dataset as every checkpoint does
    assert json.loads((tmp_path / "eval.json").read_text())["dataset"] == "synthetic-tiny"


def test_algorithm_tables_and_the_constants_of_older_configs(tmp_path):
    base = '[federate]\nalgorithm = "{}"\n'
    path = tmp_path / "a.toml"
    path.write_text(base.format("fedprox") + "[fedprox]\nmu = 0.5\n[moon]\nmu = 3.0\n")
    cfg = FederatedRunConfig.from_toml(path)
    assert cfg.params.mu == 0.5  # the [moon] table is there but not for this run
    assert FederatedRunConfig.from_dict(cfg.to_dict()) == cfg  # what config.json and checkpoints hold
    path.write_text(base.format("moon") + "mu = 2.0\nmoon_temperature = 0.1\n")
    cfg = FederatedRunConfig.from_toml(path)  # a config of fedinv before per-algorithm tables
    assert (cfg.params.mu, cfg.params.temperature) == (2.0, 0.1)
    path.write_text(base.format("moon") + "mu = 2.0\nfeddyn_alpha = 0.3\n")
    with pytest.raises(ConfigError, match=r"federate.feddyn_alpha does not apply to algorithm moon; it is a "
                                          r"setting of \[feddyn\]"):
        FederatedRunConfig.from_toml(path)  # it would do nothing: said, not ignored
    path.write_text(base.format("feddyn") + "[feddyn]\nalpha = 0.0\n")
    with pytest.raises(ConfigError, match="alpha must be > 0"):
        FederatedRunConfig.from_toml(path)
    path.write_text(base.format("fedavg") + "[fedprox]\nmuu = 1\n")
    with pytest.raises(ConfigError, match=r"unknown ProxParams field\(s\) \['muu'\]; known: mu"):
        FederatedRunConfig.from_toml(path)
    path.write_text(base.format("fedavg") + "[fedproxx]\nmu = 1\n")
    with pytest.raises(ConfigError, match=r"unknown table\(s\) \['fedproxx'\]"):
        FederatedRunConfig.from_toml(path)
    path.write_text(base.format("feddistill-query") + 'server = "ftg"\n')
    with pytest.raises(ConfigError, match="server must be none"):
        FederatedRunConfig.from_toml(path)


def test_server_step_tables_and_the_generator_settings_of_older_configs(tmp_path):
    path = tmp_path / "a.toml"
    path.write_text('[federate]\nserver = "ftg"\n[ftg]\nlambda_md = 0.5\n[feddf]\nmodel_steps = 3\n[fedgen]\nweight = 2.0\n')
    cfg = FederatedRunConfig.from_toml(path)
    assert cfg.server_params.lambda_md == 0.5 and cfg.server_params.model_steps == 5  # [feddf] is not this run's
    assert FederatedRunConfig.from_dict(cfg.to_dict()) == cfg
    assert FederatedRunConfig.from_toml(path, ['federate.server="fedgen"']).server_params.weight == 2.0
    assert FederatedRunConfig.from_toml(path, ['federate.server="none"']).server_params is None
    path.write_text('[federate]\nserver = "ftg"\n[generator]\nlambda_md = 0.25\nbn_stats = "eval"\n')
    cfg = FederatedRunConfig.from_toml(path)  # a config of fedinv before per-step tables
    assert (cfg.server_params.lambda_md, cfg.server_params.bn_stats) == (0.25, "eval")
    for server, message in (("feddf", r"generator.lambda_md does not apply to server step feddf; it is a setting "
                                      r"of \[ftg\]"),
                            ("none", r"generator.bn_stats does not apply to server none; it is a setting of "
                                     r"\[ftg\] and \[feddf\]")):
        with pytest.raises(ConfigError, match=message):
            FederatedRunConfig.from_toml(path, [f'federate.server="{server}"'])
    path.write_text('[ftg]\nlambda_mdd = 1\n')
    with pytest.raises(ConfigError, match=r"unknown FTGParams field\(s\) \['lambda_mdd'\]; known: bn_stats"):
        FederatedRunConfig.from_toml(path)
    # a run saved by fedinv 0.1 kept every step's settings in [generator]: they go where they belong,
    # and those of other steps did nothing then and are dropped
    saved = cfg.to_dict()
    del saved["ftg"]
    saved["generator"].update(model_steps=5, model_lr=0.01, temperature=1.0, per_model_steps=False, lambda_md=0.25,
                              ensemble="label", bn_stats="eval", generator_ema=0.0, save_every=0, fedgen_weight=1.0)
    assert FederatedRunConfig.from_dict(saved) == cfg and changes(saved, cfg) == []


@pytest.mark.slow
def test_killed_federate_resumes_to_the_same_model(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    cfg = tmp_path / "fl.toml"
    cfg.write_text('[data]\ndataset = "synthetic-tiny"\n[partition]\nnum_nodes = 3\nalpha = 1.0\n'
                   '[federate]\nalgorithm = "scaffold"\nserver = "ftg"\nmodel = "lenet5"\nrounds = 6\n'
                   'batch_size = 16\n[generator]\niterations = 3\nbatch_size = 16\n')
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "fedinv", "-q", "federate", str(cfg), "--no-progress", "--out"]
    proc = subprocess.Popen(cmd + [str(tmp_path / "killed")], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    metrics, deadline = tmp_path / "killed" / "metrics.jsonl", time.time() + 120
    while (not metrics.exists() or len(metrics.read_text().splitlines()) < 2) and time.time() < deadline \
            and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (tmp_path / "killed" / "report.json").exists()
    subprocess.run(cmd + [str(tmp_path / "killed"), "--resume"], env=env, check=True, capture_output=True)
    subprocess.run(cmd + [str(tmp_path / "straight")], env=env, check=True, capture_output=True)
    a = torch.load(tmp_path / "killed" / "global.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "straight" / "global.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert len((tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()) == 6


def test_ftg_saves_generated_batches_for_view(tmp_path, tiny_train):
    from fedinv.store import read_meta, read_rows

    cfg = with_step(tiny_run("fedavg", "ftg"), save_every=1)
    federate(cfg, tmp_path / "run", progress=False, train=tiny_train)
    store = tmp_path / "run" / "generated.h5"
    assert read_meta(store)["n_valid"] == 2 * 16
    images, labels, soft = read_rows(store)
    assert images.dtype == torch.uint8 and images.shape[1:] == (3, 16, 16)
    assert torch.allclose(soft.exp().sum(1), torch.ones(32), atol=1e-2)  # ensemble log-probabilities
    res = CliRunner().invoke(cli, ["view", str(store), "--out", str(tmp_path / "g.png"), "--per-class", "2"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "g.png").is_file()


def test_ema_update_by_hand():
    ema, model = nn.BatchNorm1d(2), nn.BatchNorm1d(2)
    with torch.no_grad():
        ema.weight.fill_(1.0)
        model.weight.fill_(3.0)
        model.running_mean.fill_(5.0)
    ema_update(ema, model, 0.75)
    assert torch.allclose(ema.weight, torch.full((2,), 1.5))  # 0.75 * 1 + 0.25 * 3
    assert torch.equal(ema.running_mean, model.running_mean)


def test_ftg_with_an_ema_generator_resumes_exactly_and_keeps_the_average(tmp_path, tiny_train):
    cfg = tiny_run("fedavg", "ftg", rounds=3, participation=0.5)
    cfg = with_step(cfg, generator_ema=0.5)
    federate(cfg, tmp_path / "whole", progress=False, train=tiny_train)
    federate(cfg, tmp_path / "split", progress=False, train=tiny_train, stop_after=2)
    federate(cfg, tmp_path / "split", resume=True, progress=False, train=tiny_train)
    a = torch.load(tmp_path / "whole" / "global.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "split" / "global.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    server = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=True)["server"]["server_step"]
    g, ema = server["generator"], server["generator_ema"]
    assert any(not torch.equal(g[k], ema[k]) for k in g)  # an average, not a copy
    plain = federate(tiny_run("fedavg", "ftg", rounds=1), tmp_path / "plain", progress=False, train=tiny_train)
    assert plain["complete"]
    saved = torch.load(tmp_path / "plain" / "checkpoint.pt", weights_only=True)
    assert "generator_ema" not in saved["server"]["server_step"]
    with pytest.raises(ConfigError, match=r"generator_ema must be in \[0, 1\)"):
        FTGParams(generator_ema=1.0)


def test_ftg_with_the_label_weighted_ensemble_runs_and_differs_from_the_class_weighted_one(tmp_path, tiny_train):
    label = tiny_run("fedavg", "ftg", rounds=1)
    assert label.server_params.ensemble == "label"  # the reference code's, the default
    cfg = with_step(label, ensemble="class")
    runs = [federate(c, tmp_path / c.server_params.ensemble, progress=False, train=tiny_train) for c in (cfg, label)]
    assert all(r["complete"] and math.isfinite(r["history"][0]["server_distill"]) for r in runs)
    states = [torch.load(tmp_path / name / "global.pt", weights_only=True)["state_dict"] for name in ("class", "label")]
    assert any(not torch.equal(states[0][k], states[1][k]) for k in states[0])
    with pytest.raises(ConfigError, match="ensemble='mean' is not valid; choose one of: class, label"):
        FTGParams(ensemble="mean")
    per_model = with_step(label, per_model_steps=True)
    run = federate(per_model, tmp_path / "per-model", progress=False, train=tiny_train)
    saved = torch.load(tmp_path / "per-model" / "checkpoint.pt", weights_only=True)["server"]["server_step"]
    adam_steps = {int(v["step"]) for v in saved["optimizer"]["state"].values()}
    fc = per_model.federate
    models = len(participants(per_model.partition.num_nodes, fc.participation, fc.seed, 0))  # one round: 2 of 4
    assert adam_steps == {per_model.generator.iterations * per_model.generator.generator_steps * models}
    assert run["complete"] and math.isfinite(run["history"][0]["server_fidelity"])
    # a run saved before the option existed ran the class form: it loads (and resumes) as such
    older = cfg.to_dict()
    del older["ftg"]["ensemble"]
    assert FederatedRunConfig.from_dict(older).server_params.ensemble == "class"
    assert changes(older, cfg) == [] and changes(older, label) == ["server_params.ensemble"]
