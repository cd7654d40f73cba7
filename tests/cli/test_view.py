"""Tests of fedinv.cli.view."""

from click.testing import CliRunner

from fedinv.cli.main import cli


def test_view_refuses_a_zero_scale_and_a_non_png_name(tmp_path):
    for args in (["--scale", "0", "--out", str(tmp_path / "g.png")],
                 ["--scale", "100000", "--out", str(tmp_path / "g.png")], ["--out", str(tmp_path / "grid.txt")]):
        res = CliRunner().invoke(cli, ["view", "--dataset", "synthetic-tiny", *args])
        assert res.exit_code == 2 and res.output.startswith("error: "), res.output
