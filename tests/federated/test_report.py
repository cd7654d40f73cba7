"""Tests of fedinv.federated.report."""

import json

from click.testing import CliRunner

from fedinv.cli.main import cli


def test_federate_cli_and_report(tmp_path):
    cfg = tmp_path / "fl.toml"
    cfg.write_text('[data]\ndataset = "synthetic-tiny"\n[partition]\nnum_nodes = 3\nalpha = 1.0\n'
                   '[federate]\nmodel = "lenet5"\nrounds = 2\nbatch_size = 32\nserver = "ftg"\n'
                   '[generator]\niterations = 1\nbatch_size = 8\n')
    res = CliRunner().invoke(cli, ["-q", "federate", str(cfg), "--out", str(tmp_path / "a"), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["rounds"] == 2
    res = CliRunner().invoke(cli, ["-q", "federate", str(cfg), "--out", str(tmp_path / "a"), "--no-progress"])
    assert res.exit_code == 0 and json.loads(res.output)["rounds"] == 2, res.output  # finished: read back
    res = CliRunner().invoke(cli, ["-q", "federate", str(cfg), "--out", str(tmp_path / "a"), "--no-progress",
                                   "--set", "federate.rounds=1"])
    assert res.exit_code == 2 and "already run 2 rounds" in res.output, res.output
    res = CliRunner().invoke(cli, ["-q", "federate-report", str(tmp_path / "a"), "--out", str(tmp_path / "cmp"),
                                   "--target", "0.1"])
    assert res.exit_code == 0, res.output
    table = (tmp_path / "cmp" / "table.md").read_text()
    assert "fedavg+ftg" in table and (tmp_path / "cmp" / "accuracy.png").is_file()
    res = CliRunner().invoke(cli, ["-q", "evaluate", str(tmp_path / "a" / "global.pt"), "--device", "cpu",
                                   "--out", str(tmp_path / "eval.json")])
    assert res.exit_code == 0, res.output  # the global model records its dataset as every checkpoint does
    assert json.loads((tmp_path / "eval.json").read_text())["dataset"] == "synthetic-tiny"
