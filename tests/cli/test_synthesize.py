"""Tests of fedinv.cli.synthesize."""

from click.testing import CliRunner

from fedinv.cli.main import cli
from tests.helpers import random_teachers, write_teachers


def test_cli_synthesize_view_and_audit(tmp_path):
    models, counts = random_teachers(2)
    write_teachers(tmp_path / "t", models, counts)
    runner = CliRunner()
    res = runner.invoke(cli, ["-q", "synthesize", "--teachers", str(tmp_path / "t"), "--out", str(tmp_path / "s.h5"),
                              "--num-images", "20", "--batch-size", "10", "--iterations", "2", "--device", "cpu",
                              "--no-progress"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli, ["view", str(tmp_path / "s.h5"), "--out", str(tmp_path / "g.png"), "--per-class", "3",
                              "--classes", "0-4"])
    assert res.exit_code == 0, res.output
    from PIL import Image
    assert Image.open(tmp_path / "g.png").size[1] == 18 + 5 * (16 + 2) * 2 + 2 * 2  # the title, 5 rows
    res = runner.invoke(cli, ["view", "--dataset", "synthetic-tiny", "--out", str(tmp_path / "d.png")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli, ["audit", "--store", str(tmp_path / "s.h5"),
                              "--reference", str(tmp_path / "t" / "node-0.pt"),
                              "--out", str(tmp_path / "a.json"), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    import json
    report = json.loads((tmp_path / "a.json").read_text())
    assert len(report["per_class"]) == 10 and 0 <= report["reference_agreement"] <= 1
    assert (tmp_path / "a.png").exists()
