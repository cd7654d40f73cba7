"""Tests of fedinv.cli.synthesize."""

from click.testing import CliRunner
from PIL import Image, ImageFont

from fedinv.cli.main import cli
from fedinv.data.datasets import load_dataset
from fedinv.viz import rows_per_class
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
    assert Image.open(tmp_path / "g.png").size[1] == 18 + 5 * (16 + 2) * 2 + 2 * 2  # the title, 5 rows
    res = runner.invoke(cli, ["view", "--dataset", "synthetic-tiny", "--out", str(tmp_path / "d.png")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli, ["view", str(tmp_path / "s.h5"), "--out", str(tmp_path / "c.png"), "--per-class", "3",
                              "--classes", "0-4", "--compare-real"])
    assert res.exit_code == 0, res.output
    grid, compared = Image.open(tmp_path / "g.png"), Image.open(tmp_path / "c.png").convert("RGB")
    assert compared.size[1] == grid.size[1] and compared.size[0] > grid.size[0] + 16 + 3 * 16 * 2
    assert compared.crop((0, 0, *grid.size)).tobytes() == grid.convert("RGB").tobytes(), "the store's grid on the left"
    real = load_dataset("synthetic-tiny", "train")
    first = real.images[int(rows_per_class(real.labels.numpy(), 3, [0])[0])]  # class 0's first real pick, seed 0
    names = max(int(ImageFont.load_default().getlength(n)) for n in real.info.class_names[:5])
    x0 = grid.size[0] + 16 + 10 + names  # the right grid's first image, after the gap and the class names
    assert compared.getpixel((x0 + 4, 18 + 4)) == tuple(first[:, 0, 0].tolist()), "real images of the class at right"
    res = runner.invoke(cli, ["view", "--dataset", "synthetic-tiny", "--compare-real", "--out",
                              str(tmp_path / "x.png")])
    assert res.exit_code == 2 and "give the STORE" in res.output
    res = runner.invoke(cli, ["audit", "--store", str(tmp_path / "s.h5"),
                              "--reference", str(tmp_path / "t" / "node-0.pt"),
                              "--out", str(tmp_path / "a.json"), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    import json
    report = json.loads((tmp_path / "a.json").read_text())
    assert len(report["per_class"]) == 10 and 0 <= report["reference_agreement"] <= 1
    assert (tmp_path / "a.png").exists()
