"""Tests of fedinv.federated.ftg."""

import dataclasses
import math

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from fedinv.cli.main import cli
from fedinv.errors import ConfigError
from fedinv.evaluate import class_level_logits
from fedinv.federated.config import FederateConfig, FederatedRunConfig, GeneratorConfig
from fedinv.federated.ftg import (FedFTG, FTGParams, ServerModels, diversity_loss, ema_update, generator_objective,
                                  label_distribution, label_level_teacher)
from fedinv.federated.local import LocalResult, RoundInfo
from fedinv.federated.rounds import federate, participants
from fedinv.models import build_model_for
from fedinv.train.resume import changes
from tests.helpers import t, tiny_run


def with_step(cfg: FederatedRunConfig, **settings) -> FederatedRunConfig:
    """`cfg` with these settings of its server step changed."""
    return dataclasses.replace(cfg, server_params=dataclasses.replace(cfg.server_params, **settings))


def results_of(states, counts=((5,) * 5 + (0,) * 5, (0,) * 5 + (5,) * 5)):
    return [LocalResult(s, 10, label_counts=torch.tensor(c)) for s, c in zip(states, counts)]


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
    with pytest.raises(ConfigError, match="ensemble must be one of class, label; got 'mean'"):
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
