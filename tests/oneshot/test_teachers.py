"""Tests of fedinv.oneshot.teachers."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from fedinv.checkpoint import load_checkpoint
from fedinv.data.partition import load_partition
from fedinv.errors import ConfigError, RunStateError
from fedinv.oneshot.teachers import train_teachers
from fedinv.train import lr_at
from tests.helpers import tiny_teacher_config


def _fedinv(*args):
    return [sys.executable, "-m", "fedinv", "-v", *map(str, args)]


def test_teachers_learn_and_report(tmp_path, tiny_partition):
    cfg = tiny_teacher_config(epochs=3)
    report = train_teachers(load_partition(tiny_partition), cfg, tmp_path / "t", progress=False)
    assert len(report["node_accuracy"]) == 3
    assert report["ensemble_accuracy"] > 0.5, "10 classes: chance is 0.1"
    assert 0 <= report["fedavg_accuracy"] <= 1
    assert len(report["ensemble_per_class_accuracy"]) == 10
    saved = json.loads((tmp_path / "t" / "report.json").read_text())
    assert saved["ensemble_accuracy"] == report["ensemble_accuracy"] and saved["config"]["epochs"] == 3
    ckpt = load_checkpoint(tmp_path / "t" / "node-1.pt", num_classes=10, image_shape=(3, 16, 16))
    part = load_partition(tiny_partition)
    assert sum(ckpt.label_counts) == len(part.indices[1])
    assert ckpt.config["model"] == "lenet5" and ckpt.seed == 0 and ckpt.fedinv_version
    assert ckpt.extra["partition_sha256"] == part.content_hash()
    assert len(ckpt.metrics["train_history"]) == 3
    assert not (tmp_path / "t" / "partial" / "node-1.pt").exists()


def test_same_initialization_on_every_node(tmp_path, tiny_partition):
    from fedinv.oneshot.teachers import initial_model

    def initial_state(cfg, info, node):
        return initial_model(cfg, info, node).state_dict()
    from fedinv.data.datasets import load_dataset
    info = load_dataset("synthetic-tiny").info
    same = tiny_teacher_config()
    a, b = initial_state(same, info, 0), initial_state(same, info, 2)
    assert all(torch.equal(a[k], b[k]) for k in a)
    own = tiny_teacher_config(same_init=False)
    c, d = initial_state(own, info, 0), initial_state(own, info, 2)
    assert not all(torch.equal(c[k], d[k]) for k in c)


def test_finished_nodes_are_skipped_and_other_config_refused(tmp_path, tiny_partition):
    part = load_partition(tiny_partition)
    cfg = tiny_teacher_config(epochs=1)
    train_teachers(part, cfg, tmp_path / "t", nodes=[0], progress=False)
    stamp = os.stat(tmp_path / "t" / "node-0.pt").st_mtime_ns
    report = train_teachers(part, cfg, tmp_path / "t", nodes=[0, 2], progress=False)
    assert os.stat(tmp_path / "t" / "node-0.pt").st_mtime_ns == stamp
    assert report["nodes"] == [0, 2]
    with pytest.raises(RunStateError, match=r"another config \(epochs\)"):
        train_teachers(part, tiny_teacher_config(epochs=2), tmp_path / "t", nodes=[0], progress=False)
    with pytest.raises(ConfigError, match=r"out of range; the partition has nodes 0..2"):
        train_teachers(part, cfg, tmp_path / "t", nodes=[5], progress=False)


def test_lr_schedules():
    assert lr_at(0, 100, 0.1, "cosine") == pytest.approx(0.1)
    assert lr_at(50, 100, 0.1, "cosine") == pytest.approx(0.05)
    assert lr_at(60, 100, 0.1, "step") == pytest.approx(0.01)
    assert lr_at(80, 100, 0.1, "step") == pytest.approx(0.001)
    assert lr_at(99, 100, 0.1, "constant") == 0.1


@pytest.mark.slow
def test_killed_train_teachers_resumes_to_the_same_model(tmp_path):
    """SIGKILL mid-training, rerun: it continues from the epoch checkpoint and ends bit-identical
    to an uninterrupted run."""
    subprocess.run(_fedinv("partition", "--dataset", "synthetic-tiny", "--num-nodes", "1", "--scheme", "iid",
                           "--out", tmp_path / "p.json"), check=True, capture_output=True)
    train = ["train-teachers", "--partition", tmp_path / "p.json", "--model", "lenet5", "--epochs", "12",
             "--batch-size", "8", "--device", "cpu", "--no-progress"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(_fedinv(*train, "--out", tmp_path / "killed"), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    partial = tmp_path / "killed" / "partial" / "node-0.pt"
    deadline = time.time() + 60
    while not partial.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert partial.exists() and not (tmp_path / "killed" / "node-0.pt").exists(), "killed too late"
    done = torch.load(partial, weights_only=True)["epoch"]
    assert 1 <= done < 12
    resumed = subprocess.run(_fedinv(*train, "--out", tmp_path / "killed"), env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming after epoch" in resumed.stderr
    subprocess.run(_fedinv(*train, "--out", tmp_path / "straight"), env=env, check=True, capture_output=True)
    a = load_checkpoint(tmp_path / "killed" / "node-0.pt")
    b = load_checkpoint(tmp_path / "straight" / "node-0.pt")
    for k in a.state_dict:
        assert torch.equal(a.state_dict[k], b.state_dict[k]), k
    assert len(a.metrics["train_history"]) == 12
    lines = [json.loads(x) for x in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert [(x["node"], x["epoch"]) for x in lines] == [(0, e) for e in range(1, 13)], "none lost or doubled"
    assert [x["loss"] for x in lines] == [h["loss"] for h in a.metrics["train_history"]]
    tested = [x["epoch"] for x in lines if "test_accuracy" in x]
    assert tested == [5, 10, 12]  # every 5 epochs (the default) and the last, kept across the kill
    assert lines[-1]["test_accuracy"] == a.metrics["test_accuracy"]
