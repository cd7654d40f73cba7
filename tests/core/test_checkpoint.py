"""Tests of fedinv.checkpoint."""

import collections

import pytest
import torch

from fedinv.checkpoint import TEACHER, ModelCheckpoint, load_checkpoint, save_checkpoint
from fedinv.errors import CheckpointError
from fedinv.models import build_model
from tests.helpers import model_dict


def make_ckpt(name="lenet5", classes=10, channels=3, size=16):
    model = build_model(name, channels, classes, size)
    return ModelCheckpoint(TEACHER, model_dict(name, channels, classes, size), model.state_dict(),
                           label_counts=list(range(classes)), config={"epochs": 1}, seed=3,
                           metrics={"test_accuracy": 0.5}, extra={"node": 2})


class Payload:  # a pickled object weights_only must refuse to build
    def __reduce__(self):
        return (print, ("code ran",))


def test_round_trip(tmp_path):
    ckpt = make_ckpt()
    save_checkpoint(ckpt, tmp_path / "node-2.pt")
    back = load_checkpoint(tmp_path / "node-2.pt", num_classes=10, image_shape=(3, 16, 16))
    assert back.model == ckpt.model and back.label_counts == ckpt.label_counts
    assert back.config == ckpt.config and back.seed == 3 and back.extra == {"node": 2}
    assert back.fedinv_version
    for k, v in ckpt.state_dict.items():
        assert torch.equal(back.state_dict[k], v)
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(back.build()(x), ckpt.build()(x))


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")


def test_corrupted_file(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint(make_ckpt(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(path)


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": TEACHER, "x": Payload()}, path)
    with pytest.raises(CheckpointError, match="refused as untrusted") as err:
        load_checkpoint(path)
    assert "weights_only" not in str(err.value)  # no hint at the unsafe way round


def test_non_finite_weights_and_mistyped_fields_are_refused(tmp_path):
    ckpt = make_ckpt()
    state = dict(ckpt.state_dict)
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name] = torch.full_like(state[name], float("nan"))
    save_checkpoint(ModelCheckpoint(TEACHER, ckpt.model, state, label_counts=ckpt.label_counts), tmp_path / "nan.pt")
    with pytest.raises(CheckpointError, match="non-finite weights"):
        load_checkpoint(tmp_path / "nan.pt")
    save_checkpoint(ModelCheckpoint(TEACHER, {**ckpt.model, "num_classes": "10"}, ckpt.state_dict), tmp_path / "s.pt")
    with pytest.raises(CheckpointError, match="model.num_classes = '10' is not a positive integer"):
        load_checkpoint(tmp_path / "s.pt")
    save_checkpoint(ModelCheckpoint(TEACHER, ckpt.model, ckpt.state_dict, label_counts=[-1] * 10), tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match=r"label_counts must be a list of integers in \[0, 10\^12\]"):
        load_checkpoint(tmp_path / "c.pt")


def test_foreign_checkpoint(tmp_path):
    path = tmp_path / "plain.pt"
    torch.save(collections.OrderedDict(build_model("lenet5", 3, 10, 16).state_dict()), path)
    with pytest.raises(CheckpointError, match="not a fedinv.teacher checkpoint"):
        load_checkpoint(path)


def test_mismatched_classes_and_shape(tmp_path):
    path = tmp_path / "m.pt"
    save_checkpoint(make_ckpt(classes=10), path)
    with pytest.raises(CheckpointError, match="10 classes, expected 100"):
        load_checkpoint(path, num_classes=100)
    with pytest.raises(CheckpointError, match=r"takes input \(3, 16, 16\), expected \(1, 28, 28\)"):
        load_checkpoint(path, image_shape=(1, 28, 28))


def test_weights_that_do_not_fit_the_model(tmp_path):
    ckpt = make_ckpt(classes=10)
    lying = ModelCheckpoint(TEACHER, model_dict("lenet5", 3, 5, 16), ckpt.state_dict, label_counts=[1] * 5)
    save_checkpoint(lying, tmp_path / "l.pt")
    with pytest.raises(CheckpointError, match="weights do not fit model 'lenet5'"):
        load_checkpoint(tmp_path / "l.pt")


def test_unknown_model_name(tmp_path):
    ckpt = make_ckpt()
    bad = ModelCheckpoint(TEACHER, dict(ckpt.model, name="alexnet"), ckpt.state_dict)
    save_checkpoint(bad, tmp_path / "u.pt")
    with pytest.raises(CheckpointError, match="unknown model 'alexnet'; known: bncnn"):
        load_checkpoint(tmp_path / "u.pt")


@pytest.mark.parametrize("content,message", [
    (b"", "not a readable epoch checkpoint of node 0: an empty file"),
    (bytes(range(7, 250)), "not a readable epoch checkpoint of node 0: no PyTorch file"),
    ("foreign", "is not fedinv's epoch checkpoint of node 0 (no config, model, optimizer); delete it"),
    ("pickled", "refused as untrusted"),
])
def test_a_resume_file_that_is_not_what_it_claims_is_a_clear_error(tmp_path, content, message):
    """Foreign, empty or pickled partial.pt files used to end in a raw traceback or a bare "Aborted!"."""
    import datetime

    from click.testing import CliRunner

    from fedinv.cli.main import cli
    from tests.helpers import TINY_TOML

    partial = tmp_path / "run" / "teachers" / "partial" / "node-0.pt"
    partial.parent.mkdir(parents=True)
    if content == "foreign":
        torch.save({"a": torch.zeros(2)}, partial)
    elif content == "pickled":
        torch.save({"config": datetime.date(2026, 1, 1)}, partial)  # a Python object: never unpickled
    else:
        partial.write_bytes(content)
    res = CliRunner().invoke(cli, ["-q", "run", str(TINY_TOML), "--out", str(tmp_path / "run"), "--no-progress"])
    assert res.exit_code == 2 and message in res.output and "Traceback" not in res.output, res.output
