"""Tests of fedinv.oneshot.synthesis.synthesize."""

import dataclasses
import json
from dataclasses import asdict

import h5py
import pytest
import torch
from PIL import Image
from click.testing import CliRunner

from fedinv.checkpoint import TEACHER, ModelCheckpoint, save_checkpoint
from fedinv.cli.main import cli
from fedinv.errors import ConfigError, DivergedError, RunStateError
from fedinv.models import build_model
from fedinv.oneshot.pipeline import RunConfig
from fedinv.oneshot.synthesis.config import SynthesisConfig
from fedinv.oneshot.synthesis.ensemble import TeacherEnsemble
from fedinv.oneshot.synthesis.synthesize import synthesize
from fedinv.oneshot.teacher_files import load_teacher_folder
from fedinv.store import StoreWriter, read_meta, read_rows
from tests.helpers import (INFO, TINY_TOML, gen_cfg, model_dict, random_teachers, small_cfg, tiny_teacher_config,
                           write_teachers)


def test_a_teacher_with_nan_weights_writes_no_synthetic_batch():
    from fedinv.oneshot.synthesis.method import make_synthesizer
    from fedinv.oneshot.synthesis.store import make_batch

    models, counts = random_teachers(2)
    with torch.no_grad():
        next(models[1].parameters()).fill_(float("nan"))
    ensemble = TeacherEnsemble(models, counts, torch.device("cpu"), INFO)
    cfg = SynthesisConfig.of(iterations=2, batch_size=4, teachers_per_step=0, device="cpu")
    with pytest.raises(DivergedError, match="synthetic batch 7: the loss is not finite"):
        make_batch(make_synthesizer(ensemble, cfg, None), 7, 4)


def test_stored_soft_labels_are_normalized_log_probabilities():
    """The class-level ensemble weighs each class separately: its rows summed to 1.05-2.72."""
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
    from fedinv.oneshot.synthesis.synthesize import synthesize
    from fedinv.oneshot.teacher_files import load_teacher_folder
    from tests.helpers import write_teachers

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
    from fedinv.models import build_model
    from fedinv.oneshot.pipeline import run_pipeline
    from tests.helpers import write_teachers

    write_teachers(tmp_path / "t", [build_model("gncnn", 3, 10, 16) for _ in range(2)],
                   torch.ones(2, 10, dtype=torch.long), name="gncnn")
    res = CliRunner().invoke(cli, ["synthesize", "--teachers", str(tmp_path / "t"), "--out", str(tmp_path / "s.h5"),
                                   "--num-images", "4", "--batch-size", "2", "--iterations", "1", "--device", "cpu"])
    assert res.exit_code == 2 and "has no BatchNorm layer" in res.output and "bncnn" in res.output, res.output
    assert "--a-bn 0" in res.output and not (tmp_path / "s.h5").exists()
    cfg = RunConfig.from_toml(TINY_TOML)
    gn = dataclasses.replace(cfg, teachers=dataclasses.replace(cfg.teachers, model="gncnn"))
    with pytest.raises(ConfigError, match="teachers.model 'gncnn' has no BatchNorm"):
        run_pipeline(gn, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "config.json").exists()


def test_store_layout_and_provenance(tmp_path):
    models, counts = random_teachers(3)
    write_teachers(tmp_path / "t", models, counts)
    stats = synthesize(tmp_path / "t", tmp_path / "s.h5", small_cfg(), progress=False)
    assert stats["n_valid"] == 50 and stats["batches"] == 5
    meta = read_meta(tmp_path / "s.h5")
    assert meta["n_valid"] == 50 and meta["num_classes"] == 10 and meta["image_shape"] == [3, 16, 16]
    assert meta["config"]["deepinversion"]["iterations"] == 4 and meta["seed"] == 0 and meta["fedinv_version"]
    assert sorted(meta["teachers"]) == ["node-0.pt", "node-1.pt", "node-2.pt"]
    images, labels, soft = read_rows(tmp_path / "s.h5")
    assert images.shape == (50, 3, 16, 16) and images.dtype == torch.uint8
    torch.testing.assert_close(soft.exp().sum(1), torch.ones(50), atol=2e-2, rtol=0)
    import h5py
    with h5py.File(tmp_path / "s.h5") as f:
        source = f["source"][:]
    assert source[:, 0].tolist() == sorted([b for b in range(5) for _ in range(12)])[:50]
    with pytest.raises(RunStateError, match="resume=False"):
        synthesize(tmp_path / "t", tmp_path / "s.h5", small_cfg(), resume=False, progress=False)
    again = synthesize(tmp_path / "t", tmp_path / "s.h5", small_cfg(), progress=False)  # complete: nothing to add
    assert again["batches"] == 0 and read_meta(tmp_path / "s.h5")["n_valid"] == 50
    with pytest.raises(RunStateError, match="other settings"):
        synthesize(tmp_path / "t", tmp_path / "s.h5", small_cfg(iterations=5), progress=False)


def test_store_resumes_after_a_kill_with_exactly_the_expected_images(tmp_path, monkeypatch):
    models, counts = random_teachers(3)
    write_teachers(tmp_path / "t", models, counts)
    synthesize(tmp_path / "t", tmp_path / "straight.h5", small_cfg(), progress=False)

    real_append = StoreWriter.append
    calls = {"n": 0}

    def dying_append(self, images, labels, soft, source):
        calls["n"] += 1
        if calls["n"] == 3:  # killed while writing batch 2: rows land, n_valid is never updated
            n = self.n_valid
            for name, value in (("images", images), ("labels", labels)):
                self.file[name].resize(n + len(labels), axis=0)
                self.file[name][n:] = value.numpy()
            self.file.flush()
            raise KeyboardInterrupt("killed")
        return real_append(self, images, labels, soft, source)

    monkeypatch.setattr(StoreWriter, "append", dying_append)
    with pytest.raises(KeyboardInterrupt):
        synthesize(tmp_path / "t", tmp_path / "killed.h5", small_cfg(), progress=False)
    assert read_meta(tmp_path / "killed.h5")["n_valid"] == 24
    monkeypatch.setattr(StoreWriter, "append", real_append)
    stats = synthesize(tmp_path / "t", tmp_path / "killed.h5", small_cfg(), resume=True, progress=False)
    assert stats["batches"] == 3, "only the missing batches are made"
    for a, b in zip(read_rows(tmp_path / "killed.h5"), read_rows(tmp_path / "straight.h5")):
        assert torch.equal(a, b)
    again = synthesize(tmp_path / "t", tmp_path / "killed.h5", small_cfg(), resume=True, progress=False)
    assert again["batches"] == 0 and again["n_valid"] == 50, "a complete store (short last batch) is left as is"
    lines = [json.loads(x) for x in (tmp_path / "killed.h5.metrics.jsonl").read_text().splitlines()]
    assert [x["batch"] for x in lines] == [0, 1, 2, 3, 4], "a line per batch, none lost or doubled by the resume"
    assert {"loss", "ce", "bn", "images", "seconds"} <= set(lines[0])
    assert Image.open(tmp_path / "killed.h5.curves.png").size[0] > 300, "the losses per batch drawn beside the store"


@pytest.mark.parametrize("method", ["deepinversion", "fast"])
def test_a_store_asked_for_more_images_grows_to_what_one_run_of_that_many_writes(tmp_path, method):
    models, counts = random_teachers(3)
    write_teachers(tmp_path / "t", models, counts)
    cfg = small_cfg(num_images=24) if method == "deepinversion" else gen_cfg(method, num_images=24)
    synthesize(tmp_path / "t", tmp_path / "straight.h5", dataclasses.replace(cfg, num_images=50), progress=False)
    synthesize(tmp_path / "t", tmp_path / "grown.h5", cfg, progress=False)
    stats = synthesize(tmp_path / "t", tmp_path / "grown.h5", dataclasses.replace(cfg, num_images=50), progress=False)
    assert stats["batches"] == 3 and read_meta(tmp_path / "grown.h5")["config"]["num_images"] == 50
    for a, b in zip(read_rows(tmp_path / "grown.h5"), read_rows(tmp_path / "straight.h5")):
        assert torch.equal(a, b)
    lines = [json.loads(x) for x in (tmp_path / "grown.h5.metrics.jsonl").read_text().splitlines()]
    assert [x["batch"] for x in lines] == [0, 1, 2, 3, 4]
    with pytest.raises(RunStateError, match="would cut it"):
        synthesize(tmp_path / "t", tmp_path / "grown.h5", cfg, progress=False)
    with pytest.raises(RunStateError, match="partial batch"):  # 50 images end in a batch of 2
        synthesize(tmp_path / "t", tmp_path / "grown.h5", dataclasses.replace(cfg, num_images=60), progress=False)
    with pytest.raises(RunStateError, match="other settings"):  # growth changes num_images, nothing else
        synthesize(tmp_path / "t", tmp_path / "grown.h5", dataclasses.replace(cfg, num_images=50, a_bn=1.0),
                   progress=False)
    assert read_meta(tmp_path / "grown.h5")["n_valid"] == 50


def test_bad_teacher_directories_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_teacher_folder(tmp_path / "none")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no node-\\*.pt"):
        load_teacher_folder(tmp_path / "empty")
    models, counts = random_teachers(2)
    write_teachers(tmp_path / "mixed", models[:1], counts[:1])
    other = build_model("lenet5", 3, 5, 16)
    save_checkpoint(ModelCheckpoint(TEACHER, model_dict("lenet5", 3, 5, 16), other.state_dict(), label_counts=[1] * 5,
                                    extra={"dataset": asdict(INFO)}), tmp_path / "mixed" / "node-1.pt")
    with pytest.raises(ConfigError, match="5 classes.*but.*10 classes"):
        load_teacher_folder(tmp_path / "mixed")
    write_teachers(tmp_path / "nocounts", models, counts)
    save_checkpoint(ModelCheckpoint(TEACHER, model_dict("lenet5", 3, 10, 16), models[0].state_dict(),
                                    extra={"dataset": asdict(INFO)}), tmp_path / "nocounts" / "node-1.pt")
    with pytest.raises(ConfigError, match="no label counts"):
        load_teacher_folder(tmp_path / "nocounts")
    wrong = build_model("lenet5", 1, 10, 28)
    save_checkpoint(ModelCheckpoint(TEACHER, model_dict("lenet5", 1, 10, 28), wrong.state_dict(), label_counts=[1] * 10,
                                    extra={"dataset": asdict(INFO)}), tmp_path / "shape" / "node-0.pt")
    with pytest.raises(ConfigError, match=r"model input \(1, 28, 28\) does not match its dataset"):
        load_teacher_folder(tmp_path / "shape")


@pytest.mark.parametrize("method", ["deepinversion", "fast"])
def test_a_synthesis_that_fails_on_its_first_batch_leaves_no_store(tmp_path, monkeypatch, method):
    """It used to leave an empty store (and a generator state) that a plain rerun then refused."""
    import fedinv.oneshot.synthesis.synthesize as synthesis

    models, counts = random_teachers(2)
    write_teachers(tmp_path / "t", models, counts)
    cfg = small_cfg(method=method, num_images=8, batch_size=4)

    def fails(*args, **kwargs):
        raise DivergedError("synthetic batch 0: the loss is not finite")

    with monkeypatch.context() as patch:
        patch.setattr(synthesis, "append_batch", fails)
        with pytest.raises(DivergedError):
            synthesize(tmp_path / "t", tmp_path / "s.h5", cfg, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t"]
    stats = synthesize(tmp_path / "t", tmp_path / "s.h5", cfg, progress=False)  # a plain rerun, no --resume
    assert stats["n_valid"] == 8


def test_teachers_or_a_reference_of_another_dataset_of_the_same_shape_are_refused(tmp_path):
    """Shapes alone let a store be distilled from, or audited by, models of another dataset."""
    from fedinv.oneshot.audit import audit_store
    from fedinv.oneshot.student.config import StudentConfig
    from fedinv.oneshot.student.train import train_student

    models, counts = random_teachers(2)
    write_teachers(tmp_path / "t", models, counts)
    synthesize(tmp_path / "t", tmp_path / "s.h5", small_cfg(num_images=8, batch_size=4), progress=False)
    other = dataclasses.replace(INFO, name="other-16px")
    write_teachers(tmp_path / "other", models, counts, info=other)
    with pytest.raises(ConfigError, match="the teachers were trained on other-16px, the store holds synthetic-tiny"):
        train_student(tmp_path / "s.h5", tmp_path / "st", StudentConfig(model="lenet5", epochs=1, device="cpu"),
                      teachers_dir=tmp_path / "other", progress=False)
    assert not (tmp_path / "st").exists()
    with pytest.raises(ConfigError, match="trained on other-16px, the store holds synthetic-tiny images"):
        audit_store(tmp_path / "s.h5", tmp_path / "other" / "node-0.pt", torch.device("cpu"))
    assert audit_store(tmp_path / "s.h5", tmp_path / "t" / "node-0.pt", torch.device("cpu"))["images"] == 8


def test_more_teachers_per_step_than_teachers_is_refused_before_any_file(tmp_path):
    models, counts = random_teachers(2)
    write_teachers(tmp_path / "t", models, counts)
    args = ["synthesize", "--teachers", str(tmp_path / "t"), "--num-images", "4", "--batch-size", "4",
            "--iterations", "1", "--device", "cpu", "--no-progress"]
    res = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "a.h5"), "--teachers-per-step", "5"])
    assert res.exit_code == 2 and "--teachers-per-step must be in [0, 2]" in res.output, res.output
    assert not (tmp_path / "a.h5").exists()
    res = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "b.h5")])  # the default 3: all of them
    assert res.exit_code == 0, res.output
