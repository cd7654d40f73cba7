"""--tensorboard: every stage's metrics mirrored to TensorBoard event files."""

import pytest
import torch
from click.testing import CliRunner

from fedinv.cli.main import cli
from fedinv.errors import ConfigError
from fedinv.runtime import MetricsLog
from tests.helpers import TINY_TOML


def scalars(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = {}
    for events in sorted(folder.rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events.parent))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            tags[tag] = [(e.step, e.value) for e in acc.Scalars(tag)]
        tags.update({f"image:{t}": len(acc.Images(t)) for t in acc.Tags()["images"]})
    return tags


def test_metrics_log_mirrors_every_number_of_a_line_at_its_step(tmp_path):
    pytest.importorskip("tensorboard")
    log = MetricsLog(tmp_path / "metrics.jsonl", tmp_path / "tb")
    log.append({"node": 1, "epoch": 2, "loss": 0.5, "train_accuracy": 0.75, "note": "text", "ok": True})
    log.append({"round": 3, "test_accuracy": 0.8, "nodes": [0, 1], "nan": float("nan")})
    log.image("grid", torch.rand(3, 8, 8), 4)
    log.close()
    tags = scalars(tmp_path / "tb")
    assert tags["node-1/loss"] == [(2, 0.5)] and tags["node-1/train_accuracy"] == [(2, 0.75)]
    assert tags["test_accuracy"] == [(3, pytest.approx(0.8))]
    assert not {"note", "ok", "nodes", "nan", "node-1/note"} & set(tags) and tags["image:grid"] == 1


def test_run_with_tensorboard_writes_each_stages_scalars(tmp_path):
    pytest.importorskip("tensorboard")
    res = CliRunner().invoke(cli, ["run", str(TINY_TOML), "--out", str(tmp_path / "run"), "--tensorboard",
                                   "--no-progress"])
    assert res.exit_code == 0, res.output
    run = tmp_path / "run"
    teachers, student = scalars(run / "teachers" / "tensorboard"), scalars(run / "student" / "tensorboard")
    synthesis = scalars(run / "synthetic.h5.tensorboard")
    assert "node-0/loss" in teachers and "node-0/test_accuracy" in teachers
    assert "loss" in student and "test_accuracy" in student
    assert "loss" in synthesis and synthesis["image:synthetic batch"] >= 1


def test_without_the_package_the_flag_says_how_to_install_it(monkeypatch, tmp_path):
    import builtins

    real = builtins.__import__

    def no_tensorboard(name, *a, **kw):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError("no tensorboard")
        return real(name, *a, **kw)
    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    with pytest.raises(ConfigError, match=r"pip install 'fedinv\[tensorboard\]'"):
        MetricsLog(tmp_path / "m.jsonl", tmp_path / "tb")
