"""Tests of fedinv.oneshot.pipeline."""

import json
import logging
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from click.testing import CliRunner

from fedinv.checkpoint import STUDENT, load_checkpoint
from fedinv.cli.main import cli
from fedinv.errors import ConfigError, RunStateError
from fedinv.oneshot.pipeline import RunConfig, run_pipeline
from fedinv.oneshot.synthesis.store import state_path
from fedinv.runtime import ran_on, resolve_precision
from fedinv.store import read_meta
from tests.helpers import REPO, TINY_TOML


CONFIGS = REPO / "assets" / "configs"


@pytest.mark.parametrize("method", ["fast", "dense"])
def test_fedinv_run_view_and_audit_per_method(tmp_path, method):
    run = tmp_path / "run"
    runner = CliRunner()
    res = runner.invoke(cli, ["-q", "run", str(CONFIGS / "tiny.toml"), "--out", str(run),
                              "--set", f'synthesis.method="{method}"', "--set", f"synthesis.{method}.steps=3"])
    assert res.exit_code == 0, res.output
    summary = json.loads((run / "summary.json").read_text())
    assert 0 <= summary["student_accuracy"] <= 1 and summary["synthetic_images"] == 96
    assert read_meta(run / "synthetic.h5")["config"]["method"] == method
    assert state_path(run / "synthetic.h5").is_file()
    res = runner.invoke(cli, ["view", str(run / "synthetic.h5"), "--out", str(tmp_path / "g.png")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli, ["audit", "--store", str(run / "synthetic.h5"), "--reference",
                              str(run / "teachers" / "node-0.pt"), "--out", str(tmp_path / "a.json"),
                              "--device", "cpu"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli, ["-q", "run", str(CONFIGS / "tiny.toml"), "--out", str(run),
                              "--set", f'synthesis.method="{method}"', "--set", f"synthesis.{method}.steps=3"])
    assert res.exit_code == 0, res.output
    assert json.loads((run / "summary.json").read_text())["student_accuracy"] == summary["student_accuracy"]


def test_run_on_synthetic_tiny_end_to_end(tmp_path, caplog):
    res = CliRunner().invoke(cli, ["-q", "run", str(TINY_TOML), "--out", str(tmp_path / "run"), "--no-progress"])
    assert res.exit_code == 0, res.output
    run = tmp_path / "run"
    for name in ("config.json", "partition.json", "partition.png", "teachers/report.json", "synthetic.h5",
                 "student/student.pt", "student/report.json", "evaluation.json", "confusion.png", "synthetic.png",
                 "summary.json"):
        assert (run / name).exists(), name
    summary = json.loads((run / "summary.json").read_text())
    assert all((run / name).is_file() for name in summary["pictures"]), summary["pictures"]
    assert summary["synthetic_images"] == 96 and 0 <= summary["student_accuracy"] <= 1
    assert set(summary["stage_seconds"]) == {"partition", "train_teachers", "synthesize", "train_student",
                                             "evaluate", "view"}
    # every artifact records the precision that ran: the config's "auto" resolved on this machine
    ran = ran_on(torch.device("cpu"), resolve_precision("auto", torch.device("cpu")))
    assert load_checkpoint(run / "teachers" / "node-0.pt").extra["ran_on"] == ran
    assert read_meta(run / "synthetic.h5")["ran_on"] == ran
    assert json.loads((run / "student" / "report.json").read_text())["ran_on"] == ran
    assert load_checkpoint(run / "student" / "student.pt", kind=STUDENT).extra["ran_on"] == ran
    # a second run finds every stage complete, and its log lines go to the run folder's run.log
    stamp = (run / "student" / "student.pt").stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="fedinv"):
        again = run_pipeline(RunConfig.from_toml(TINY_TOML), run, progress=False)
    logged = (run / "run.log").read_text()
    assert "student: " in logged and "is complete, skipped" in logged and " INFO: " in logged
    assert (run / "student" / "student.pt").stat().st_mtime_ns == stamp
    assert again["student_accuracy"] == summary["student_accuracy"]
    # ... and keeps what the run cost: its stage seconds grow by the rerun's checks, never shrink
    assert all(again["stage_seconds"][k] >= v for k, v in summary["stage_seconds"].items())
    assert again["stage_seconds"]["train_teachers"] < summary["stage_seconds"]["train_teachers"] + 1.0


def test_run_refuses_another_config_in_the_same_folder(tmp_path):
    cfg = RunConfig.from_toml(TINY_TOML)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(json.dumps({"data": {}}))
    (tmp_path / "run" / "partition.json").write_text("{}")  # the data's stage has work there
    with pytest.raises(RunStateError, match=r"another config \(.*data.dataset"):
        run_pipeline(cfg, tmp_path / "run", progress=False)


def test_bad_config_tables_and_fields(tmp_path):
    (tmp_path / "a.toml").write_text("[teacher]\nepochs = 1\n")
    with pytest.raises(ConfigError, match=r"unknown table\(s\) \['teacher'\]; known: data, partition"):
        RunConfig.from_toml(tmp_path / "a.toml")
    (tmp_path / "b.toml").write_text("[student]\nepoch = 1\n")
    with pytest.raises(ConfigError, match=r"unknown StudentConfig field\(s\) \['epoch'\]"):
        RunConfig.from_toml(tmp_path / "b.toml")


@pytest.mark.slow
def test_killed_run_continues_to_the_same_result(tmp_path):
    config = tmp_path / "slow.toml"
    config.write_text(TINY_TOML.read_text().replace("iterations = 20", "iterations = 150"))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "fedinv", "-q", "run", str(config), "--no-progress", "--out"]
    proc = subprocess.Popen(cmd + [str(tmp_path / "killed")], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    store = tmp_path / "killed" / "synthetic.h5"
    deadline = time.time() + 60
    while not store.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    time.sleep(0.5)  # mid-synthesis
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (tmp_path / "killed" / "summary.json").exists()
    subprocess.run(cmd + [str(tmp_path / "killed")], env=env, check=True, capture_output=True)
    subprocess.run(cmd + [str(tmp_path / "straight")], env=env, check=True, capture_output=True)
    a = json.loads((tmp_path / "killed" / "summary.json").read_text())
    b = json.loads((tmp_path / "straight" / "summary.json").read_text())
    assert a["student_accuracy"] == b["student_accuracy"] and a["synthetic_images"] == b["synthetic_images"]
