"""Tests of fedinv.models."""

import pytest
import torch

from fedinv.errors import ConfigError
from fedinv.models import MODELS, build_model, has_batchnorm
from fedinv.models.generators import FeatureGenerator, ImageGenerator


SHAPES = [(1, 28), (3, 32), (3, 16)]


def test_generators_shapes():
    g = ImageGenerator(8, 10, 1, 28)
    x = g(torch.randn(4, 8), torch.tensor([0, 1, 2, 9]))
    assert x.shape == (4, 1, 28, 28) and x.abs().max() <= 1
    f = FeatureGenerator(8, 10, 32, hidden=16)
    assert f(torch.randn(4, 8), torch.tensor([0, 1, 2, 9])).shape == (4, 32)
    with pytest.raises(ConfigError, match="divisible by 4"):
        ImageGenerator(8, 10, 3, 30)


def test_an_unconditional_generator_draws_the_class_from_the_code_alone():
    from fedinv.models.generators import ImageGenerator
    g = ImageGenerator(8, 10, 3, 16, width=16, conditional=False).eval()
    z = torch.randn(4, 8)
    assert g.fc_y is None
    assert torch.equal(g(z, torch.zeros(4, dtype=torch.long)), g(z, torch.full((4,), 7)))
    c = ImageGenerator(8, 10, 3, 16, width=16).eval()
    assert not torch.equal(c(z, torch.zeros(4, dtype=torch.long)), c(z, torch.full((4,), 7)))


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("channels,size", SHAPES)
def test_forward_and_backward_at_image_size(name, channels, size):
    if size < MODELS[name].min_image_size:
        with pytest.raises(ConfigError, match="at least"):
            build_model(name, channels, 7, size)
        return
    torch.manual_seed(0)
    model = build_model(name, channels, 7, size)
    x = torch.randn(2, channels, size, size)
    out = model(x)
    assert out.shape == (2, 7)
    out.logsumexp(1).mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert has_batchnorm(model) == MODELS[name].batchnorm, "the registry says which models carry BN statistics"


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(ConfigError, match=r"unknown model 'resnet19'; known: bncnn, cnn1, cnn2, feddyn-cnn, gncnn, lenet5"):
        build_model("resnet19", 3, 10, 32)


def test_paper_cnn_shapes_match_feddistill():
    # CNN1 / CNN2 flatten to 1024 / 2048 features at 32 px (feddistill.txt IV-B)
    linear = [m for m in build_model("cnn1", 3, 10, 32).modules() if isinstance(m, torch.nn.Linear)]
    assert (linear[0].in_features, linear[0].out_features) == (1024, 64)
    linear = [m for m in build_model("cnn2", 3, 10, 32).modules() if isinstance(m, torch.nn.Linear)]
    assert linear[0].in_features == 2048


def test_groupnorm_models_have_no_running_statistics_to_aggregate():
    from fedinv.aggregate import weighted_average
    from fedinv.federated.local import bn_statistics

    for name in ("gncnn", "resnet18-gn", "feddyn-cnn"):
        states = [build_model(name, 1, 10, 28).state_dict() for _ in range(2)]
        assert bn_statistics(states[0]) == {}
        assert set(states[0]) == {n for n, _ in build_model(name, 1, 10, 28).named_parameters()}  # weights only
        avg = weighted_average(states, [1, 3])
        for k in avg:
            torch.testing.assert_close(avg[k], (states[0][k].double() / 4 + 3 * states[1][k].double() / 4).float())
    assert build_model("gncnn", 1, 10, 28)[1].num_groups == 2


def test_an_outside_model_is_adapted_to_the_images_and_classes_and_says_so(caplog):
    import logging

    from fedinv.models import adapt_ends, build_model

    name = "torchvision.models:resnet18"
    with caplog.at_level(logging.INFO, logger="fedinv.models"):
        model = build_model(name, 1, 7, 28, trust=(name,))  # ImageNet's 3 channels, 1000 classes otherwise
    assert model.conv1.in_channels == 1 and model.fc.out_features == 7
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 7)
    assert "first convolution conv1 takes 1 channels instead of 3" in caplog.text
    assert adapt_ends(model, 1, 7) == []  # what fits stays


@pytest.mark.parametrize("role", ["teacher", "student"])
@pytest.mark.parametrize("name", ["torchvision.models:resnet18", "timm:resnet18"])
def test_outside_models_train_as_teacher_and_student(tmp_path, tiny_partition, tiny_train, role, name):
    from fedinv.data.partition import load_partition
    from fedinv.oneshot.student.config import StudentConfig
    from fedinv.oneshot.student.train import train_student
    from fedinv.oneshot.teachers import train_teachers
    from tests.helpers import real_store, tiny_teacher_config

    if name.startswith("timm:"):
        pytest.importorskip("timm")
    if role == "teacher":
        with pytest.raises(ConfigError, match="--trust-model"):
            train_teachers(load_partition(tiny_partition), tiny_teacher_config(model=name, epochs=1), tmp_path / "t",
                           nodes=[0], progress=False, train=tiny_train)
        # lr 0.01 in fp32: an ImageNet ResNet on 16 px images (1 x 1 maps in its last block) at lenet5's lr 0.05,
        # or under bf16 autocast even at 0.01, diverged in about 1 run of 4 (not reproducibly: left open)
        cfg = tiny_teacher_config(model=name, epochs=1, lr=0.01, precision="fp32")
        report = train_teachers(load_partition(tiny_partition), cfg, tmp_path / "t", nodes=[0], progress=False,
                                train=tiny_train, trust=(name,))
        assert 0.0 <= report["node_accuracy"][0] <= 1.0
    else:
        real_store(tmp_path / "s.h5", n=200)
        report = train_student(tmp_path / "s.h5", tmp_path / "st", StudentConfig(model=name, epochs=1, batch_size=32,
                               device="cpu"), test=None, progress=False, trust=(name,))
        assert report["store_images"] == 200


def test_a_timm_model_is_built_for_the_data_when_trusted():
    pytest.importorskip("timm")
    name = "timm:resnet18"
    with pytest.raises(ConfigError, match="--trust-model timm:resnet18"):
        build_model(name, 1, 10, 28)
    model = build_model(name, 1, 10, 28, trust=(name,))
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10) and has_batchnorm(model)
    with pytest.raises(ConfigError, match="timm:no-such-net"):
        build_model("timm:no-such-net", 1, 10, 28, trust=("timm:no-such-net",))


def test_run_federate_and_evaluate_build_an_outside_model_only_when_trusted(tmp_path):
    import json

    from click.testing import CliRunner

    from fedinv.cli.main import cli
    from tests.helpers import TINY_TOML

    name = "torchvision.models:resnet18"
    small = ["teachers.epochs=1", "synthesis.num_images=32", "synthesis.batch_size=16",
             "synthesis.deepinversion.iterations=2", "student.epochs=1", "teachers.precision='fp32'",
             "synthesis.precision='fp32'", "student.precision='fp32'", "teachers.lr=0.01",
             f"teachers.model='{name}'", f"student.model='{name}'"]
    run = ["-q", "run", str(TINY_TOML), "--out", str(tmp_path / "run"), "--no-progress",
           *[a for s in small for a in ("--set", s)]]
    res = CliRunner().invoke(cli, run)
    assert res.exit_code == 2 and f"--trust-model {name}" in res.output and not (tmp_path / "run").exists()
    res = CliRunner().invoke(cli, [*run, "--trust-model", name])
    assert res.exit_code == 0, res.output
    assert 0.0 <= json.loads((tmp_path / "run" / "summary.json").read_text())["student_accuracy"] <= 1.0
    student = str(tmp_path / "run" / "student" / "student.pt")
    assert CliRunner().invoke(cli, ["evaluate", student, "--dataset", "synthetic-tiny"]).exit_code != 0
    res = CliRunner().invoke(cli, ["evaluate", student, "--dataset", "synthetic-tiny", "--trust-model", name])
    assert res.exit_code == 0 and 0.0 <= json.loads(res.output)["accuracy"] <= 1.0

    cfg = tmp_path / "rounds.toml"
    cfg.write_text(f'[data]\ndataset = "synthetic-tiny"\n[partition]\nnum_nodes = 2\n[federate]\nmodel = "{name}"\n'
                   f'rounds = 1\nbatch_size = 32\nlr = 0.01\nprecision = "fp32"\n')
    fed = ["-q", "federate", str(cfg), "--out", str(tmp_path / "fed"), "--no-progress"]
    res = CliRunner().invoke(cli, fed)
    assert res.exit_code == 2 and f"--trust-model {name}" in res.output and not (tmp_path / "fed").exists()
    res = CliRunner().invoke(cli, [*fed, "--trust-model", name])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "fed" / "global.pt").is_file() and (tmp_path / "fed" / "curves.png").is_file()
