"""Tests of fedinv.federated.rounds."""

import dataclasses
import json
import math

import pytest
import torch
from PIL import Image

from fedinv.errors import RunStateError
from fedinv.federated.rounds import Federation, federate, mean_last_accuracy, rounds_to_target
from fedinv.runtime import ran_on, resolve_precision
from tests.helpers import tiny_run


METHODS = [("fedavg", "none"), ("fedprox", "none"), ("feddyn", "none"), ("scaffold", "none"), ("moon", "none"),
           ("feddistill", "none"), ("feddistill-query", "none"), ("fedavg", "ftg"), ("scaffold", "ftg"),
           ("fedavg", "feddf"), ("fedavg", "fedgen")]


def test_rounds_to_target():
    hist = [{"round": 1, "test_accuracy": 0.5}, {"round": 2}, {"round": 3, "test_accuracy": 0.82},
            {"round": 4, "test_accuracy": 0.86}]
    assert rounds_to_target(hist, 0.8) == 3 and rounds_to_target(hist, 0.85) == 4
    assert rounds_to_target(hist, 0.9) is None
    assert mean_last_accuracy(hist, 2) == pytest.approx((0.82 + 0.86) / 2)
    assert mean_last_accuracy(hist, 10) == pytest.approx((0.5 + 0.82 + 0.86) / 3)
    assert mean_last_accuracy([{"round": 1}], 5) is None


@pytest.mark.parametrize("algorithm,server", METHODS)
def test_two_rounds_of_every_method(tmp_path, tiny_train, algorithm, server):
    report = federate(tiny_run(algorithm, server), tmp_path, progress=False, train=tiny_train)
    assert report["complete"] and report["rounds"] == 2 and len(report["history"]) == 2
    assert 0.0 <= report["final_accuracy"] <= 1.0
    assert all(math.isfinite(r["local_loss"]) for r in report["history"])
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["round"] for line in lines] == [1, 2]
    assert (tmp_path / "global.pt").is_file() and (tmp_path / "report.json").is_file()
    assert Image.open(tmp_path / "curves.png").size[0] > 300, "accuracy and loss per round drawn into the run folder"
    assert report["ran_on"] == ran_on(torch.device("cpu"), resolve_precision("auto", torch.device("cpu")))
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
    with pytest.raises(RunStateError, match="resume=False"):
        federate(cfg, tmp_path / "split", resume=False, progress=False, train=tiny_train)
    resumed = federate(cfg, tmp_path / "split", progress=False, train=tiny_train)  # continuing is the rule
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
    subprocess.run(cmd + [str(tmp_path / "killed")], env=env, check=True, capture_output=True)
    subprocess.run(cmd + [str(tmp_path / "straight")], env=env, check=True, capture_output=True)
    a = torch.load(tmp_path / "killed" / "global.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "straight" / "global.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert len((tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()) == 6


def test_a_resumed_federate_run_removes_what_a_killed_write_left(tmp_path, tiny_train):
    from fedinv.federated.rounds import federate
    from tests.helpers import tiny_run

    federate(tiny_run(rounds=2), tmp_path, progress=False, train=tiny_train, stop_after=1)
    stale = tmp_path / ".checkpoint.pt.x1y2.tmp"
    stale.write_bytes(b"half a checkpoint")
    federate(tiny_run(rounds=2), tmp_path, resume=True, progress=False, train=tiny_train)
    assert not stale.exists()
