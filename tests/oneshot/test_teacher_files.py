"""Tests of fedinv.oneshot.teacher_files."""

import h5py
import pytest
import torch
from click.testing import CliRunner

from fedinv.checkpoint import load_checkpoint
from fedinv.cli.main import cli
from fedinv.data.datasets import dataset_info
from fedinv.errors import CheckpointError, ConfigError
from fedinv.oneshot.synthesis.config import SynthesisConfig
from fedinv.oneshot.synthesis.synthesize import synthesize
from fedinv.oneshot.teacher_files import TeacherModels
from tests.byo_models import resnet18_gray


FACTORY = "tests.byo_models:resnet18_gray"


FMNIST = dataset_info("fashion-mnist")


COUNTS = [600, 500, 0, 0, 100, 600, 600, 600, 20, 600]


SMALL_SYNTHESIS = dict(num_images=4, batch_size=2, iterations=2, device="cpu")


def saved_weights(path, model):
    torch.save(model.state_dict(), path)
    return path


def test_import_teacher_writes_a_teacher_that_synthesis_trusts_only_when_told(tmp_path):
    torch.manual_seed(0)
    weights = saved_weights(tmp_path / "resnet.pt", resnet18_gray(10))
    run = CliRunner().invoke(cli, ["import-teacher", "--model", FACTORY, "--weights", str(weights),
                                   "--label-counts", ",".join(map(str, COUNTS)), "--out", str(tmp_path / "t")])
    assert run.exit_code == 0, run.output
    assert "--trust-model tests.byo_models:resnet18_gray" in run.output
    ckpt = load_checkpoint(tmp_path / "t" / "node-0.pt", trust=(FACTORY,))
    assert ckpt.label_counts == COUNTS and ckpt.dataset_info == FMNIST
    torch.testing.assert_close(ckpt.state_dict, resnet18_gray(10).state_dict() | ckpt.state_dict)

    untrusted = CliRunner().invoke(cli, ["synthesize", "--teachers", str(tmp_path / "t"), "--out",
                                         str(tmp_path / "s.h5"), "--num-images", "4", "--batch-size", "2",
                                         "--iterations", "2", "--device", "cpu", "--no-progress"])
    assert untrusted.exit_code == 2 and "pass --trust-model tests.byo_models:resnet18_gray" in untrusted.output
    assert not (tmp_path / "s.h5").exists()
    run = CliRunner().invoke(cli, ["synthesize", "--teachers", str(tmp_path / "t"), "--out", str(tmp_path / "s.h5"),
                                   "--num-images", "4", "--batch-size", "2", "--iterations", "2", "--device", "cpu",
                                   "--no-progress", "--trust-model", FACTORY])
    assert run.exit_code == 0, run.output
    with h5py.File(tmp_path / "s.h5", "r") as f:
        assert f["images"].shape == (4, 1, 28, 28) and int(f["n_valid"][()]) == 4


@pytest.mark.parametrize("args,message", [
    (["--label-counts", "1,2,3"], "label counts must be 10 integers in [0, 10^12]"),
    (["--label-counts", ",".join(["1" + "0" * 30] * 10)], "label counts must be 10 integers in [0, 10^12]"),
    (["--dataset", "cifar10"], "does not take cifar10 images"),
    (["--model", "tests.byo_models:nothing"], "model factory 'tests.byo_models:nothing' not found"),
    (["--model", "lenet5"], "weights do not fit model 'lenet5'"),
    (["--mean", "0.1,0.2"], "--mean needs 1 value"),
])
def test_import_teacher_refuses_what_cannot_be_a_teacher(tmp_path, args, message):
    weights = saved_weights(tmp_path / "resnet.pt", resnet18_gray(10))
    base = {"--model": FACTORY, "--label-counts": ",".join(map(str, COUNTS)), "--out": str(tmp_path / "t")}
    base.update(dict(zip(args[::2], args[1::2])))
    run = CliRunner().invoke(cli, ["import-teacher", "--weights", str(weights), *sum(map(list, base.items()), [])])
    assert run.exit_code == 2 and message in run.output, run.output
    assert not (tmp_path / "t").exists()


def test_a_teacher_file_naming_code_is_refused_without_trust(tmp_path):
    weights = saved_weights(tmp_path / "resnet.pt", resnet18_gray(10))
    CliRunner().invoke(cli, ["import-teacher", "--model", FACTORY, "--weights", str(weights),
                             "--label-counts", ",".join(map(str, COUNTS)), "--out", str(tmp_path / "t")])
    with pytest.raises(CheckpointError, match="is Python code named by the file"):
        load_checkpoint(tmp_path / "t" / "node-0.pt")
    with pytest.raises(CheckpointError, match="is Python code named by the file"):
        load_checkpoint(tmp_path / "t" / "node-0.pt", trust=("tests.byo_models:another_model",))


def test_synthesize_takes_teachers_held_in_memory(tmp_path):
    torch.manual_seed(0)
    models = [resnet18_gray(10), resnet18_gray(10)]
    teachers = TeacherModels(models, [COUNTS, COUNTS[::-1]], FMNIST)
    stats = synthesize(teachers, tmp_path / "s.h5", SynthesisConfig.of(**SMALL_SYNTHESIS), progress=False)
    assert stats["n_valid"] == 4
    with h5py.File(tmp_path / "s.h5", "r") as f:
        assert sorted(f.attrs["teachers"]) and "model-1" in f.attrs["teachers"]
    mlp = TeacherModels([torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))], [COUNTS], FMNIST)
    with pytest.raises(ConfigError, match=r"teacher 0 \(Sequential\) has no BatchNorm layer.*bncnn.*--a-bn 0"):
        synthesize(mlp, tmp_path / "mlp.h5", SynthesisConfig.of(**SMALL_SYNTHESIS), progress=False)
    assert not (tmp_path / "mlp.h5").exists()
    no_bn = SynthesisConfig.of(**SMALL_SYNTHESIS, a_bn=0.0)
    assert synthesize(mlp, tmp_path / "mlp.h5", no_bn, progress=False)["n_valid"] == 4
    with pytest.raises(ConfigError, match="2 teacher models but 1 label counts"):
        TeacherModels(models, [COUNTS], FMNIST)
