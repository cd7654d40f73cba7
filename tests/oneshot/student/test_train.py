"""Tests of fedinv.oneshot.student.train."""

import dataclasses
import json

import pytest
import torch
from click.testing import CliRunner

from fedinv.cli.main import cli
from fedinv.data.datasets import load_dataset
from fedinv.errors import ConfigError
from fedinv.oneshot.student.config import StudentConfig
from fedinv.oneshot.student.train import train_student
from tests.helpers import real_store


def test_student_learns_a_tiny_task_above_chance(tmp_path):
    real_store(tmp_path / "s.h5")
    test = load_dataset("synthetic-tiny", "test")
    cfg = StudentConfig(model="lenet5", epochs=4, batch_size=32, lr=0.05, kd_weight=1.0, ce_weight=1.0,
                        device="cpu", buffer_batches=4)
    report = train_student(tmp_path / "s.h5", tmp_path / "st", cfg, test=test, progress=False)
    assert report["test_accuracy"] > 0.5, report["history"]
    assert len(report["history"]) == 4 and (tmp_path / "st" / "student.pt").exists()
    assert report["sample_passes"] == 4 * 1000 and report["cpu_seconds"] > 0  # the budget it spent
    assert not (tmp_path / "st" / "partial.pt").exists()
    res = CliRunner().invoke(cli, ["evaluate", str(tmp_path / "st" / "student.pt"), "--out",
                                   str(tmp_path / "e.json"), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    ev = json.loads((tmp_path / "e.json").read_text())
    assert ev["accuracy"] == pytest.approx(report["test_accuracy"])
    assert sum(map(sum, ev["confusion_matrix"])) == 200 and (tmp_path / "e.png").exists()


def test_steps_per_epoch_fixes_an_epoch_cost_over_passes_of_the_pool(tmp_path):
    real_store(tmp_path / "s.h5", n=100)
    cfg = StudentConfig(model="lenet5", epochs=2, batch_size=32, steps_per_epoch=7, device="cpu", ce_weight=1.0,
                        kd_weight=0.0)
    report = train_student(tmp_path / "s.h5", tmp_path / "st", cfg, progress=False)
    # 7 steps over a pool of 100 rows in batches of 32 (32, 32, 32, 4 a pass) span two passes
    assert [h["steps_per_rank"] for h in report["history"]] == [7, 7]
    assert [h["sample_passes"] for h in report["history"]] == [3 * 32 + 4 + 3 * 32, 3 * 32 + 4 + 3 * 32]


def test_student_resumes_from_its_epoch_checkpoint(tmp_path, monkeypatch):
    real_store(tmp_path / "s.h5", n=300)
    cfg = StudentConfig(model="lenet5", epochs=3, batch_size=32, device="cpu", ce_weight=1.0)
    train_student(tmp_path / "s.h5", tmp_path / "a", cfg, progress=False)
    import fedinv.train.resume as st  # where epoch checkpoints are written
    real_save = st.save_torch

    def stop_after_two(obj, path):  # the run is killed right after saving epoch 2
        real_save(obj, path)
        if obj["epoch"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(st, "save_torch", stop_after_two)
    with pytest.raises(KeyboardInterrupt):
        train_student(tmp_path / "s.h5", tmp_path / "c", cfg, progress=False)
    monkeypatch.setattr(st, "save_torch", real_save)
    resumed = train_student(tmp_path / "s.h5", tmp_path / "c", cfg, progress=False)
    assert [h["epoch"] for h in resumed["history"]] == [1, 2, 3]
    a = torch.load(tmp_path / "a" / "student.pt", weights_only=True)["state_dict"]
    c = torch.load(tmp_path / "c" / "student.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], c[k]) for k in a), "resumed = uninterrupted"
    lines = {d: [json.loads(x) for x in (tmp_path / d / "metrics.jsonl").read_text().splitlines()] for d in "ac"}
    epochs = {d: [(x["epoch"], x["loss"], x["lr"]) for x in lines[d]] for d in "ac"}
    assert epochs["c"] == epochs["a"]
    assert len(lines["a"]) == 3, "a line per epoch, none lost or doubled by the resume"


def test_student_needs_something_to_learn_from(tmp_path):
    with pytest.raises(ConfigError, match="nothing to learn from"):
        StudentConfig(kd_weight=0, ce_weight=0)
    real_store(tmp_path / "s.h5", n=100)
    with pytest.raises(ConfigError, match="need --teachers"):
        train_student(tmp_path / "s.h5", tmp_path / "x", StudentConfig(kd_source="teachers", device="cpu"),
                      progress=False)
    with pytest.raises(ConfigError, match="local_weight > 0 needs"):
        train_student(tmp_path / "s.h5", tmp_path / "x", StudentConfig(local_weight=1.0, device="cpu"),
                      progress=False)


def test_a_student_with_ods_trains_and_draws_its_directions_from_the_seed(tmp_path):
    from tests.helpers import random_teachers, write_teachers
    models, counts = random_teachers(2)
    write_teachers(tmp_path / "t", models, counts)
    real_store(tmp_path / "s.h5", n=64)
    reports = [train_student(tmp_path / "s.h5", tmp_path / f"st{i}", StudentConfig(
        model="lenet5", epochs=1, batch_size=32, ods_eta=0.03, device="cpu"), teachers_dir=tmp_path / "t",
        progress=False) for i in range(2)]
    assert reports[0]["history"][0]["loss"] == reports[1]["history"][0]["loss"] > 0


def test_node_weights_fall_for_a_teacher_that_contradicts_the_pool_and_resume_with_the_student(tmp_path, monkeypatch):
    from fedinv.oneshot.student.node_weights import signed_steps
    right = torch.tensor([[5.0, 0.0, 0.0]] * 4)  # says class 0, as the labels do
    wrong = torch.tensor([[0.0, 5.0, 0.0]] * 4)
    w = signed_steps([torch.stack([right, wrong])], [torch.zeros(4, dtype=torch.long)], torch.full((2, 3), 0.5),
                     torch.ones(2), lr=0.3)
    assert w.tolist() == pytest.approx([1.0, 0.7])  # the one that agrees stays at its bound, the other drops

    from tests.helpers import random_teachers, write_teachers
    import fedinv.oneshot.student.train as student_train
    models, counts = random_teachers(2)
    write_teachers(tmp_path / "t", models, counts)
    real_store(tmp_path / "s.h5", n=64)
    cfg = StudentConfig(model="lenet5", epochs=3, batch_size=32, ensemble_lr=0.1, ensemble_batches=2, device="cpu")
    whole = train_student(tmp_path / "s.h5", tmp_path / "whole", cfg, teachers_dir=tmp_path / "t", progress=False)
    weights = [h["node_weights"] for h in whole["history"]]
    assert len(weights) == 3 and all(len(w) == 2 and all(0 <= v <= 1 for v in w) for w in weights)
    assert weights[0] != [1.0, 1.0], "the random teachers disagree with the pool's labels: weights move"
    real_save, calls = student_train.save_progress, {"n": 0}

    def killed_after_two_epochs(*a, **k):
        real_save(*a, **k)
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(student_train, "save_progress", killed_after_two_epochs)
    with pytest.raises(KeyboardInterrupt):
        train_student(tmp_path / "s.h5", tmp_path / "killed", cfg, teachers_dir=tmp_path / "t", progress=False)
    monkeypatch.setattr(student_train, "save_progress", real_save)
    resumed = train_student(tmp_path / "s.h5", tmp_path / "killed", cfg, teachers_dir=tmp_path / "t", progress=False)
    assert [h["node_weights"] for h in resumed["history"]] == weights
    assert resumed["history"][-1]["loss"] == whole["history"][-1]["loss"], "resumed = uninterrupted"


def test_the_student_reads_its_store_datasets_test_split_itself_or_says_why_not(tmp_path, caplog, monkeypatch):
    import fedinv.oneshot.student.train as student_train

    real_store(tmp_path / "s.h5", n=64)
    cfg = StudentConfig(model="lenet5", epochs=1, batch_size=32, device="cpu")
    report = train_student(tmp_path / "s.h5", tmp_path / "auto", cfg, progress=False)  # test="auto"
    assert 0.0 <= report["test_accuracy"] <= 1.0
    assert "test_accuracy" not in train_student(tmp_path / "s.h5", tmp_path / "none", cfg, test=None, progress=False)
    with pytest.raises(ConfigError, match="'auto'"):
        train_student(tmp_path / "s.h5", tmp_path / "bad", cfg, test="yes", progress=False)

    def missing(*a, **kw):
        raise ConfigError("not here")
    monkeypatch.setattr(student_train, "load_dataset", missing)
    report = train_student(tmp_path / "s.h5", tmp_path / "offline", cfg, progress=False)
    assert "test_accuracy" not in report and "records no test accuracy" in caplog.text


def test_init_teachers_mean_starts_the_student_at_the_teachers_sample_weighted_average(tmp_path):
    from fedinv.oneshot.synthesis.ensemble import load_ensemble
    from fedinv.oneshot.student.train import teachers_mean
    from fedinv.models import build_model_for
    from tests.helpers import random_teachers, write_teachers
    models, counts = random_teachers(2)
    write_teachers(tmp_path / "t", models, counts)
    ensemble = load_ensemble(tmp_path / "t", torch.device("cpu"))
    n0, n1 = ensemble.counts.sum(1).tolist()
    a, b = (m.state_dict() for m in ensemble.models)
    student = build_model_for("lenet5", ensemble.info)
    start = teachers_mean(student, ensemble)
    key = next(k for k, v in start.items() if v.is_floating_point())
    assert torch.allclose(start[key], (n0 * a[key] + n1 * b[key]) / (n0 + n1))  # by hand: weighted by samples
    real_store(tmp_path / "s.h5", n=64)
    cfg = StudentConfig(model="lenet5", epochs=1, batch_size=32, init="teachers-mean", device="cpu")
    report = train_student(tmp_path / "s.h5", tmp_path / "st", cfg, teachers_dir=tmp_path / "t", progress=False)
    assert report["config"]["init"] == "teachers-mean"
    with pytest.raises(ConfigError, match="teachers-mean starts the student from the teachers: give --teachers"):
        train_student(tmp_path / "s.h5", tmp_path / "x", cfg, progress=False)
    with pytest.raises(ConfigError, match="needs the student to be the teachers' model"):
        train_student(tmp_path / "s.h5", tmp_path / "y", dataclasses.replace(cfg, model="bncnn"),
                      teachers_dir=tmp_path / "t", progress=False)
