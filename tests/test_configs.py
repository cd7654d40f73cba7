"""The shipped configs load, and run end to end on tiny stand-in data (their datasets cannot be
downloaded here)."""

import json

import pytest
from click.testing import CliRunner

from fedinv.cli.main import cli
from fedinv.cli.parsing import examples
from fedinv.federated.config import FederatedRunConfig
from fedinv.oneshot.pipeline import RunConfig
from tests.helpers import REPO

CONFIGS = REPO / "fedinv" / "configs"
ONESHOT = [n for n in examples() if "rounds" not in n and n != "feddistill-fmnist"]
ROUNDS = [n for n in examples() if "rounds" in n or n == "feddistill-fmnist"]


@pytest.mark.parametrize("name", examples())
def test_every_shipped_config_loads(name):
    path = CONFIGS / f"{name}.toml"
    cfg = FederatedRunConfig.from_toml(path) if name in ROUNDS else RunConfig.from_toml(path)
    assert cfg is not None


STAND_IN = ["data.dataset='synthetic-tiny'", "teachers.epochs=1", "synthesis.num_images=32",
            "synthesis.batch_size=16", "student.epochs=1", "student.batch_size=32", "partition.num_nodes=3",
            "teachers.device='cpu'", "synthesis.device='cpu'", "student.device='cpu'",
            "synthesis.dense.steps=2", "teachers.precision='fp32'", "synthesis.precision='fp32'",
            "student.precision='fp32'"]


@pytest.mark.parametrize("name", ["cifar10-dense-0.1"])  # the svhn and cifar100 ones differ in the dataset only
def test_the_gpu_settings_run_on_stand_in_data(tmp_path, name):
    args = ["run", name, "--out", str(tmp_path / "run"), "--no-progress"]
    for override in STAND_IN:
        args += ["--set", override]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert 0.0 <= summary["student_accuracy"] <= 1.0


@pytest.mark.parametrize("name", ["cifar10-rounds-reference", "fmnist-rounds-robust"])
def test_the_rounds_settings_run_on_stand_in_data(tmp_path, name):
    args = ["federate", name, "--out", str(tmp_path / "fed"), "--no-progress",
            "--set", "data.dataset='synthetic-tiny'", "--set", "partition.num_nodes=5", "--set", "federate.rounds=1",
            "--set", "federate.participation=1.0", "--set", "federate.local_epochs=1", "--set", "federate.device='cpu'"]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "fed" / "report.json").read_text())
    assert len(report["history"]) == 1 and 0.0 <= report["final_accuracy"] <= 1.0
