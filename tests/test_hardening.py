"""Bad input gets one clear error (exit code 2 on the command line), and nothing half-written."""

import dataclasses
import json

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from test_student import real_store
from test_synthesis import INFO, random_teachers

from fedinv.cli.main import cli
from fedinv.errors import ConfigError, DivergedError, RunStateError
from fedinv.oneshot.pipeline import RunConfig
from fedinv.oneshot.student.config import StudentConfig
from fedinv.oneshot.student.train import train_student
from fedinv.store import StoreWriter, read_meta
from fedinv.train import Stepper, train_epoch


def damage(path, how):
    with h5py.File(path, "r+") as f:
        if how == "n_valid past the rows":
            f["n_valid"][()] = 500
        elif how == "labels cut short":
            f["labels"].resize(50, axis=0)
        elif how == "no soft labels":
            del f["soft_labels"]
        elif how == "label out of range":
            f["labels"][3] = 99
        elif how == "images of another size":
            del f["images"]
            f.create_dataset("images", data=np.zeros((100, 3, 8, 8), np.uint8))
        elif how == "negative n_valid":
            f["n_valid"][()] = -1


@pytest.mark.parametrize("how,message", [
    ("n_valid past the rows", "n_valid = 500"), ("labels cut short", r"\['labels'\] hold fewer rows"),
    ("no soft labels", r"dataset\(s\) \['soft_labels'\] missing"), ("label out of range", "labels outside 0..9"),
    ("images of another size", r"images has rows of shape \(3, 8, 8\)"), ("negative n_valid", "is negative")])
def test_a_damaged_store_is_refused_when_opened(tmp_path, how, message):
    path = tmp_path / "s.h5"
    real_store(path, n=100)
    meta = read_meta(path)
    damage(path, how)
    with pytest.raises(ConfigError, match=message):
        read_meta(path)
    with pytest.raises(ConfigError, match=message):  # --resume does not grow it first
        StoreWriter(path, {k: meta[k] for k in ("num_classes", "image_shape", "mean", "std", "seed", "config",
                                                 "teachers", "dataset")}, resume=True)
    res = CliRunner().invoke(cli, ["train-student", "--store", str(path), "--out", str(tmp_path / "st"), "--no-test",
                                   "--device", "cpu", "--no-progress"])
    assert res.exit_code == 2 and res.output.startswith("error: ") and "is damaged" in res.output
    assert not (tmp_path / "st" / "student.pt").exists()


def test_an_empty_store_is_a_clear_error(tmp_path):
    path = tmp_path / "s.h5"
    real_store(path, n=0)
    with pytest.raises(ConfigError, match="holds no images yet"):
        train_student(path, tmp_path / "st", StudentConfig(model="lenet5", device="cpu"), progress=False)
    res = CliRunner().invoke(cli, ["view", str(path), "--out", str(tmp_path / "g.png")])
    assert res.exit_code == 2 and "holds no images yet" in res.output and not (tmp_path / "g.png").exists()


def test_view_refuses_a_zero_scale_and_a_non_png_name(tmp_path):
    for args in (["--scale", "0", "--out", str(tmp_path / "g.png")], ["--out", str(tmp_path / "grid.txt")]):
        res = CliRunner().invoke(cli, ["view", "--dataset", "synthetic-tiny", *args])
        assert res.exit_code == 2 and res.output.startswith("error: "), res.output


def test_a_diverging_loss_stops_with_the_step_named():
    model = torch.nn.Linear(2, 2)
    stepper = Stepper(torch.optim.SGD(model.parameters(), lr=0.1), torch.device("cpu"))
    batches = [(torch.ones(4, 2), torch.zeros(4, dtype=torch.long))] * 3

    def objective(m, x, y):
        return {"loss": m(x).sum() * float("inf")}

    with pytest.raises(DivergedError, match="student epoch 2: the loss is .* at step 1"):
        train_epoch(model, batches, objective, stepper, what="student epoch 2")


def test_a_teacher_with_nan_weights_writes_no_synthetic_batch():
    from fedinv.oneshot.synthesis.config import SynthesisConfig
    from fedinv.oneshot.synthesis.ensemble import TeacherEnsemble
    from fedinv.oneshot.synthesis.method import make_synthesizer
    from fedinv.oneshot.synthesis.store import make_batch

    models, counts = random_teachers(2)
    with torch.no_grad():
        next(models[1].parameters()).fill_(float("nan"))
    ensemble = TeacherEnsemble(models, counts, torch.device("cpu"), INFO)
    cfg = SynthesisConfig.of(iterations=2, batch_size=4, teachers_per_step=0, device="cpu")
    with pytest.raises(DivergedError, match="synthetic batch 7: the loss is not finite"):
        make_batch(make_synthesizer(ensemble, cfg, None), 7, 4)


@pytest.mark.parametrize("table,message", [
    ('[synthesis]\nnum_images = "96"\n', r"SynthesisConfig.num_images must be int, got '96' \(str\)"),
    ("[partition]\nnum_nodes = 3.7\n", r"PartitionConfig.num_nodes must be int, got 3.7 \(float\)"),
    ("[partition]\nalpha = true\n", r"PartitionConfig.alpha must be float, got True \(bool\)")])
def test_toml_values_of_the_wrong_type_name_field_type_and_value(tmp_path, table, message):
    (tmp_path / "c.toml").write_text(table)
    with pytest.raises(ConfigError, match=message):
        RunConfig.from_toml(tmp_path / "c.toml")


def test_a_resumed_federate_run_removes_what_a_killed_write_left(tmp_path, tiny_train):
    from test_federated import tiny_run

    from fedinv.federated.rounds import federate

    federate(tiny_run(rounds=2), tmp_path, progress=False, train=tiny_train, stop_after=1)
    stale = tmp_path / ".checkpoint.pt.x1y2.tmp"
    stale.write_bytes(b"half a checkpoint")
    federate(tiny_run(rounds=2), tmp_path, resume=True, progress=False, train=tiny_train)
    assert not stale.exists()


def test_an_interrupted_command_says_how_to_continue(tmp_path, monkeypatch):
    import fedinv.cli.synthesize as cmd

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cmd, "synthesize_distributed", interrupted)
    models, counts = random_teachers(2)
    from test_synthesis import write_teachers
    write_teachers(tmp_path / "t", models, counts)
    res = CliRunner().invoke(cli, ["synthesize", "--teachers", str(tmp_path / "t"), "--out", str(tmp_path / "s.h5"),
                                   "--device", "cpu"])
    assert res.exit_code == 130 and "--resume" in res.output


def test_a_run_that_cannot_start_writes_nothing_and_device_is_no_change(tmp_path):
    import dataclasses

    from test_pipeline import TINY

    from fedinv.oneshot.pipeline import run_pipeline

    cfg = RunConfig.from_toml(TINY)
    bad = dataclasses.replace(cfg, student=dataclasses.replace(cfg.student, model="resnet19"))
    with pytest.raises(ConfigError, match="unknown model 'resnet19'"):
        run_pipeline(bad, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "config.json").exists()
    (tmp_path / "run" / "config.json").write_text(__import__("json").dumps(
        dataclasses.replace(cfg, teachers=dataclasses.replace(cfg.teachers, device="cuda")).to_dict()))
    from fedinv.train.resume import changes
    assert changes(__import__("json").loads((tmp_path / "run" / "config.json").read_text()), cfg) == []


def test_set_overrides_fields_of_the_toml_type_checked(tmp_path):
    from test_pipeline import TINY

    from fedinv.federated.config import FederatedRunConfig

    cfg = RunConfig.from_toml(TINY, ["synthesis.deepinversion.iterations=7", "student.epochs=2",
                                     "data.dataset=synthetic-tiny", "teachers.augment=false",
                                     "synthesis.deepinversion.lr=0.5"])
    p = cfg.synthesis.params
    assert (p.iterations, cfg.student.epochs, cfg.teachers.augment, p.lr) == (7, 2, False, 0.5)
    for bad, message in (("synthesis.deepinversion.iterations=many",
                          r"DeepInversionParams.iterations must be int, got 'many'"),
                         ("synthesis.iteration=7", r"unknown SynthesisConfig field\(s\) \['iteration'\]; known"),
                         ("synthesis.fast.stepz=7", r"unknown FastParams field\(s\) \['stepz'\]; known"),
                         ("synthesis.fast=7", r"synthesis.fast must be a table"),
                         ("synthesis.method.x=7", r"SynthesisConfig.method must be str"),
                         ("synth.iterations=7", r"unknown table\(s\) \['synth'\]; known: data, partition"),
                         ("iterations=7", "expected TABLE.FIELD=VALUE")):
        with pytest.raises(ConfigError, match=message):
            RunConfig.from_toml(TINY, [bad])
    (tmp_path / "f.toml").write_text('[federate]\nalgorithm = "fedprox"\n')
    fed = FederatedRunConfig.from_toml(tmp_path / "f.toml", ["fedprox.mu=0.25", "federate.rounds=3"])
    assert fed.params.mu == 0.25 and fed.federate.rounds == 3
    res = CliRunner().invoke(cli, ["run", str(TINY), "--out", str(tmp_path / "run"), "--set", "student.epochs=0"])
    assert res.exit_code == 2 and "epochs must be >= 1" in res.output
    assert not (tmp_path / "run" / "config.json").exists()


def test_resume_onto_a_file_that_is_no_store_and_an_unwritable_output(tmp_path):
    models, counts = random_teachers(2)
    from test_synthesis import write_teachers
    write_teachers(tmp_path / "t", models, counts)
    (tmp_path / "notes.h5").write_text("not HDF5")
    base = ["synthesize", "--teachers", str(tmp_path / "t"), "--num-images", "4", "--batch-size", "4",
            "--iterations", "1", "--device", "cpu", "--no-progress"]
    res = CliRunner().invoke(cli, [*base, "--out", str(tmp_path / "notes.h5"), "--resume"])
    assert res.exit_code == 2 and "is not an HDF5 store" in res.output
    (tmp_path / "file").write_text("a file where a folder should be")
    res = CliRunner().invoke(cli, [*base, "--out", str(tmp_path / "file" / "s.h5")])
    assert res.exit_code == 2 and res.output.startswith("error: cannot read or write"), res.output


def test_a_second_writer_on_a_store_is_told_so(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "s.h5"
    real_store(path, n=10)
    meta = read_meta(path)
    holder = subprocess.Popen([sys.executable, "-c", f"import h5py, time\nf = h5py.File({str(path)!r}, 'r+')\n"
                               "print('open', flush=True)\ntime.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(RunStateError, match="being written by another process"):
            StoreWriter(path, {k: meta[k] for k in ("num_classes", "image_shape", "mean", "std", "seed", "config",
                                                     "teachers", "dataset")}, resume=True)
    finally:
        holder.kill()
        holder.wait()


def test_a_tiny_dirichlet_alpha_gives_each_class_to_one_node_without_warnings():
    import warnings

    from fedinv.config import DataConfig, PartitionConfig
    from fedinv.data.partition import make_partition

    labels = np.repeat(np.arange(10), 100)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's "invalid value encountered in cast" was the symptom
        part = make_partition(labels, 10, PartitionConfig(num_nodes=5, alpha=0.001, min_size=1), DataConfig())
    counts = part.label_counts(labels)
    assert (counts.max(0) >= 95).all()  # every class (almost) whole on one node
    assert counts[-1].sum() < 1000  # not everything dumped on the last node


def test_a_store_reads_the_same_in_plain_h5py_and_h5dump(tmp_path):
    """/images used h5py's own LZF filter, which h5dump (HDF5 1.10) printed as empty data."""
    import shutil
    import subprocess

    real_store(tmp_path / "s.h5", n=200)
    with h5py.File(tmp_path / "s.h5", "r") as f:
        images = f["images"]
        assert images.compression == "gzip" and images.shuffle  # built into every HDF5 library
        ours = images[:3]
    if shutil.which("h5dump") is None:
        pytest.skip("h5dump not installed (apt-get install hdf5-tools)")
    out = subprocess.run(["h5dump", "-d", "/images", "-s", "0,0,0,0", "-c", "3,3,16,16", "-y", "-w", "0",
                          str(tmp_path / "s.h5")], capture_output=True, text=True, check=True).stdout
    data = out.split("DATA {", 1)[1].split("}", 1)[0]
    values = [int(v) for v in data.replace(",", " ").split()]
    assert values == ours.reshape(-1).tolist()


def test_stored_soft_labels_are_normalized_log_probabilities():
    """The class-level ensemble weighs each class separately: its rows summed to 1.05-2.72."""
    from fedinv.oneshot.synthesis.config import SynthesisConfig
    from fedinv.oneshot.synthesis.ensemble import TeacherEnsemble
    from fedinv.oneshot.synthesis.method import make_synthesizer
    from fedinv.oneshot.synthesis.store import make_batch

    models, counts = random_teachers(3)
    ensemble = TeacherEnsemble(models, counts, torch.device("cpu"), INFO)
    cfg = SynthesisConfig.of(iterations=2, batch_size=8, device="cpu")
    (_, _, soft, _), _ = make_batch(make_synthesizer(ensemble, cfg, None), 0, 8)
    torch.testing.assert_close(soft.exp().sum(1), torch.ones(8))


def test_identical_teacher_runs_give_stores_the_same_teacher_hashes(tmp_path, tiny_partition):
    """Identical train-teachers runs wrote byte-different files (the metrics' wall times), so a
    store's `teachers` attribute differed between identical runs."""
    from conftest import tiny_teacher_config

    from fedinv.data.partition import load_partition
    from fedinv.oneshot.teacher_files import load_teacher_folder
    from fedinv.oneshot.teachers import train_teachers
    from fedinv.runtime import sha256_file

    for run in ("a", "b"):
        train_teachers(load_partition(tiny_partition), tiny_teacher_config(epochs=1), tmp_path / run,
                       nodes=[0], progress=False)
    a, b = load_teacher_folder(tmp_path / "a"), load_teacher_folder(tmp_path / "b")
    assert a.hashes() == b.hashes()
    assert sha256_file(a.paths[0]) != sha256_file(b.paths[0])  # the files themselves differ
    state = a.checkpoints[0].state_dict
    different = state | {"0.weight": state["0.weight"] + 1e-6}
    assert dataclasses.replace(a.checkpoints[0], state_dict=different).digest() != a.checkpoints[0].digest()


def test_a_store_that_recorded_teacher_file_hashes_still_resumes(tmp_path):
    from test_synthesis import write_teachers

    from fedinv.oneshot.synthesis.config import SynthesisConfig
    from fedinv.oneshot.synthesis.synthesize import synthesize
    from fedinv.oneshot.teacher_files import load_teacher_folder

    write_teachers(tmp_path / "t", *random_teachers(2))
    cfg = SynthesisConfig.of(num_images=8, batch_size=4, iterations=2, device="cpu")
    synthesize(tmp_path / "t", tmp_path / "s.h5", cfg, progress=False)
    with h5py.File(tmp_path / "s.h5", "a") as f:  # killed after its first batch
        f["n_valid"][()] = 4
    with pytest.raises(RunStateError, match="other settings"):  # other teachers are still refused
        with h5py.File(tmp_path / "s.h5", "a") as f:
            f.attrs["teachers"] = json.dumps({"node-0.pt": "0" * 64, "node-1.pt": "1" * 64}, sort_keys=True)
        synthesize(tmp_path / "t", tmp_path / "s.h5", cfg, resume=True, progress=False)
    with h5py.File(tmp_path / "s.h5", "a") as f:
        f.attrs["teachers"] = json.dumps(load_teacher_folder(tmp_path / "t").file_hashes(), sort_keys=True)
    assert synthesize(tmp_path / "t", tmp_path / "s.h5", cfg, resume=True, progress=False)["n_valid"] == 8


def test_inversion_of_teachers_without_batchnorm_is_refused_naming_the_bn_models(tmp_path):
    from test_pipeline import TINY
    from test_synthesis import write_teachers

    from fedinv.models import build_model
    from fedinv.oneshot.pipeline import run_pipeline

    write_teachers(tmp_path / "t", [build_model("gncnn", 3, 10, 16) for _ in range(2)],
                   torch.ones(2, 10, dtype=torch.long), name="gncnn")
    res = CliRunner().invoke(cli, ["synthesize", "--teachers", str(tmp_path / "t"), "--out", str(tmp_path / "s.h5"),
                                   "--num-images", "4", "--batch-size", "2", "--iterations", "1", "--device", "cpu"])
    assert res.exit_code == 2 and "has no BatchNorm layer" in res.output and "bncnn" in res.output, res.output
    assert "--a-bn 0" in res.output and not (tmp_path / "s.h5").exists()
    cfg = RunConfig.from_toml(TINY)
    gn = dataclasses.replace(cfg, teachers=dataclasses.replace(cfg.teachers, model="gncnn"))
    with pytest.raises(ConfigError, match="teachers.model 'gncnn' has no BatchNorm"):
        run_pipeline(gn, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "config.json").exists()


def test_a_full_disk_stops_synthesis_with_the_store_intact(tmp_path, monkeypatch):
    """HDF5 that ran out of space mid-write crashed the process (rc 139)."""
    import collections

    from test_synthesis import write_teachers

    import fedinv.store as store_module

    write_teachers(tmp_path / "t", *random_teachers(2))
    args = ["synthesize", "--teachers", str(tmp_path / "t"), "--out", str(tmp_path / "s.h5"), "--num-images", "8",
            "--batch-size", "4", "--iterations", "1", "--device", "cpu", "--no-progress"]
    usage = collections.namedtuple("usage", "total used free")
    calls = []

    def nearly_full(path):  # room for the first batch only
        calls.append(path)
        return usage(1 << 30, 1 << 30, (1 << 21) if len(calls) == 1 else (1 << 19))

    monkeypatch.setattr(store_module.shutil, "disk_usage", nearly_full)
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 2 and "is full" in res.output and "--resume" in res.output, res.output
    assert read_meta(tmp_path / "s.h5")["n_valid"] == 4
    monkeypatch.undo()
    res = CliRunner().invoke(cli, [*args, "--resume"])
    assert res.exit_code == 0, res.output
    assert read_meta(tmp_path / "s.h5")["n_valid"] == 8
