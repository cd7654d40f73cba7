"""Exported models (fedinv.export) load and compute without fedinv."""

import json
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner

from fedinv.checkpoint import GLOBAL, STUDENT, TEACHER, ModelCheckpoint, save_checkpoint
from fedinv.cli.main import cli
from fedinv.errors import ConfigError
from fedinv.export import export_model, load_model
from fedinv.models import seeded_model
from tests.helpers import INFO


@pytest.mark.parametrize("kind", [TEACHER, STUDENT, GLOBAL])
def test_load_model_takes_any_kind_of_checkpoint(tmp_path, kind):
    model = seeded_model("lenet5", INFO, 0, 0)
    save_checkpoint(ModelCheckpoint.of(kind, "lenet5", INFO, model.state_dict(), label_counts=[1] * 10),
                    tmp_path / "m.pt")
    x = torch.randn(3, *INFO.image_shape)
    torch.testing.assert_close(load_model(tmp_path / "m.pt")(x), model.eval()(x))


def test_an_exported_model_computes_the_same_logits_without_fedinv(tmp_path):
    model = seeded_model("bncnn", INFO, 0, 0)
    save_checkpoint(ModelCheckpoint.of(STUDENT, "bncnn", INFO, model.state_dict()), tmp_path / "s.pt")
    res = CliRunner().invoke(cli, ["export", str(tmp_path / "s.pt"), "--out", str(tmp_path / "s.pt2")])
    assert res.exit_code == 0, res.output
    x = torch.randn(5, *INFO.image_shape)  # another batch size than the one it was exported with
    torch.save(x, tmp_path / "x.pt")
    script = (  # fedinv cannot be imported in this process: PyTorch alone reads the file
        "import sys, json, torch; sys.modules['fedinv'] = None\n"
        "extra = {'fedinv.json': ''}\n"
        f"m = torch.export.load({str(tmp_path / 's.pt2')!r}, extra_files=extra).module()\n"
        f"x = torch.load({str(tmp_path / 'x.pt')!r})\n"
        f"torch.save(m(x), {str(tmp_path / 'y.pt')!r}); print(extra['fedinv.json'])\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    facts = json.loads(out.stdout.strip().splitlines()[-1])
    assert facts["mean"] == list(INFO.mean) and facts["class_names"] == list(INFO.class_names)
    torch.testing.assert_close(torch.load(tmp_path / "y.pt"), load_model(tmp_path / "s.pt")(x), atol=1e-5, rtol=1e-5)


def test_an_onnx_export_computes_the_same_logits(tmp_path):
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    model = seeded_model("bncnn", INFO, 0, 0)
    save_checkpoint(ModelCheckpoint.of(STUDENT, "bncnn", INFO, model.state_dict()), tmp_path / "s.pt")
    export_model(tmp_path / "s.pt", tmp_path / "s.onnx", "onnx")
    session = ort.InferenceSession(str(tmp_path / "s.onnx"))
    x = torch.randn(5, *INFO.image_shape)
    logits = session.run(None, {"images": x.numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(logits), load_model(tmp_path / "s.pt")(x).detach(), atol=1e-4,
                               rtol=1e-4)


def test_export_errors_name_the_way_out(tmp_path, monkeypatch):
    model = seeded_model("lenet5", INFO, 0, 0)
    save_checkpoint(ModelCheckpoint.of(STUDENT, "lenet5", INFO, model.state_dict()), tmp_path / "s.pt")
    with pytest.raises(ConfigError, match="one of pt2, onnx"):
        export_model(tmp_path / "s.pt", tmp_path / "s.x", "torchscript")
    import builtins

    real = builtins.__import__

    def no_onnx(name, *a, **kw):
        if name.split(".")[0] in ("onnx", "onnxscript"):
            raise ImportError(name)
        return real(name, *a, **kw)
    monkeypatch.setattr(builtins, "__import__", no_onnx)
    with pytest.raises(ConfigError, match=r"pip install 'fedinv\[onnx\]'"):
        export_model(tmp_path / "s.pt", tmp_path / "s.onnx", "onnx")
    assert not (tmp_path / "s.onnx").exists()
