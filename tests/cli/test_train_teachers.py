"""Tests of fedinv.cli.train_teachers."""

import pytest
from click.testing import CliRunner

from fedinv.cli.main import cli


def test_cli_partition_and_train_subset(tmp_path):
    runner = CliRunner()
    res = runner.invoke(cli, ["partition", "--dataset", "synthetic-tiny", "--scheme", "iid", "--num-nodes", "2",
                              "--out", str(tmp_path / "p.json")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "p.png").stat().st_size > 0
    res = runner.invoke(cli, ["-q", "train-teachers", "--partition", str(tmp_path / "p.json"), "--out",
                              str(tmp_path / "t"), "--nodes", "1", "--model", "lenet5", "--epochs", "1",
                              "--device", "cpu", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "t" / "node-1.pt").exists() and not (tmp_path / "t" / "node-0.pt").exists()


@pytest.mark.parametrize("args,message", [
    (["partition", "--dataset", "synthetic-tiny", "--alpha", "0", "--out", "x.json"], "alpha must be > 0"),
    (["partition", "--dataset", "synthetic-tiny", "--num-nodes", "2000", "--scheme", "iid", "--out", "x.json"],
     "2000 nodes but only 1000 samples"),
    (["partition", "--dataset", "cifar11", "--out", "x.json"], "unknown dataset 'cifar11'; known:"),
    (["train-teachers", "--partition", "missing.json", "--out", "t"], "create it with `fedinv partition`"),
])
def test_cli_errors_are_one_clear_line(tmp_path, args, message):
    res = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert res.exit_code == 2 and message in res.output, res.output
    assert "Traceback" not in res.output


def test_cli_unknown_model_and_scheme(tmp_path):
    runner = CliRunner()
    runner.invoke(cli, ["partition", "--dataset", "synthetic-tiny", "--num-nodes", "2",
                        "--out", str(tmp_path / "p.json")])
    res = runner.invoke(cli, ["train-teachers", "--partition", str(tmp_path / "p.json"), "--out", str(tmp_path / "t"),
                              "--model", "resnet19"])
    assert res.exit_code == 2 and "unknown model 'resnet19'; known: bncnn, cnn1" in res.output
    res = runner.invoke(cli, ["partition", "--scheme", "shards", "--out", "x.json"])
    assert res.exit_code == 2 and "'shards' is not one of 'iid', 'dirichlet'" in res.output
