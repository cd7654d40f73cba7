import json
import math
import shutil

import pytest
import torch
from click.testing import CliRunner

from fedinv.cli.main import cli
from fedinv.config import to_dict
from fedinv.data.datasets import load_dataset
from fedinv.errors import ConfigError, RunStateError
from fedinv.oneshot.student.config import StudentConfig
from fedinv.oneshot.student.objective import student_objective
from fedinv.oneshot.student.report import finished_student
from fedinv.oneshot.student.train import train_student
from fedinv.store import StoreWriter, iterate_store, read_meta
from fedinv.train.objectives import hard_kd_loss, kd_loss


def test_kd_loss_by_hand():
    s, t, T = torch.tensor([[1.0, 0.0, -1.0]]), torch.tensor([[0.0, 2.0, 0.0]]), 2.0
    p = [math.exp(v / T) for v in (0.0, 2.0, 0.0)]
    p = [v / sum(p) for v in p]
    q = [math.exp(v / T) for v in (1.0, 0.0, -1.0)]
    q = [v / sum(q) for v in q]
    expected = T * T * sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    assert kd_loss(s, t, T).item() == pytest.approx(expected, rel=1e-5)
    assert kd_loss(t, t, T).item() == pytest.approx(0.0, abs=1e-6)
    # log-probabilities as targets give the same loss as the logits they came from
    assert kd_loss(s, t.log_softmax(1), T).item() == pytest.approx(kd_loss(s, t, T).item(), rel=1e-5)


def test_hard_kd_is_cross_entropy_on_the_teachers_label():
    s = torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.2, 3.0]])
    t = torch.tensor([[0.0, 2.0, 0.0], [-1.0, 0.0, -5.0]])  # labels 1 and 1
    by_hand = -(s.log_softmax(1)[0, 1] + s.log_softmax(1)[1, 1]) / 2
    assert hard_kd_loss(s, t).item() == pytest.approx(by_hand.item(), rel=1e-6)
    assert hard_kd_loss(s, t.log_softmax(1)).item() == pytest.approx(by_hand.item(), rel=1e-6)
    torch.manual_seed(0)
    model, x = torch.nn.Linear(4, 3), torch.randn(5, 4)
    targets = torch.randn(5, 3)
    y = torch.zeros(5, dtype=torch.long)  # the stored label plays no part in the KD term
    hard = student_objective(model, x, y, targets, StudentConfig(kd_form="hard", temperature=7.0))
    assert hard["kd"].item() == pytest.approx(torch.nn.functional.cross_entropy(model(x), targets.argmax(1)).item())
    soft = student_objective(model, x, y, targets, StudentConfig(temperature=7.0))
    assert soft["kd"].item() == pytest.approx(kd_loss(model(x), targets, 7.0).item())
    with pytest.raises(ConfigError, match="soft, hard"):
        StudentConfig(kd_form="argmax")


def real_store(path, n=1000):
    """A store holding synthetic-tiny's real training images, soft labels = one-hot log-probs."""
    data = load_dataset("synthetic-tiny")
    info = data.info
    meta = {"num_classes": 10, "image_shape": list(info.image_shape), "mean": list(info.mean),
            "std": list(info.std), "seed": 0, "config": {"note": "real images"}, "teachers": {},
            "dataset": {"name": info.name, "class_names": list(info.class_names), "hflip": info.hflip}}
    with StoreWriter(path, meta, chunk_rows=100) as w:
        for i in range(0, n, 100):
            y = data.labels[i:i + 100]
            soft = torch.nn.functional.one_hot(y, 10).float().clamp_min(1e-4).log()
            w.append(data.images[i:i + 100], y, soft, torch.zeros(len(y), 2, dtype=torch.int32))
    return data


def test_iterate_store_visits_every_row_once_in_bounded_blocks(tmp_path):
    data = real_store(tmp_path / "s.h5", n=1000)
    seen = []
    for x, y, s in iterate_store(tmp_path / "s.h5", 64, torch.Generator().manual_seed(0), buffer_batches=3):
        assert len(y) <= 64 and x.shape[1:] == (3, 16, 16)
        seen.append(y)
    assert sum(len(y) for y in seen) == 1000
    assert sorted(torch.cat(seen).tolist()) == sorted(data.labels.tolist())
    first = next(iterate_store(tmp_path / "s.h5", 64, torch.Generator().manual_seed(1)))[1]
    assert not torch.equal(first, seen[0]), "shuffled per generator"


def test_student_learns_a_tiny_task_above_chance(tmp_path):
    real_store(tmp_path / "s.h5")
    test = load_dataset("synthetic-tiny", "test")
    cfg = StudentConfig(model="lenet5", epochs=4, batch_size=32, lr=0.05, kd_weight=1.0, ce_weight=1.0,
                        device="cpu", buffer_batches=4)
    report = train_student(tmp_path / "s.h5", tmp_path / "st", cfg, test=test, progress=False)
    assert report["test_accuracy"] > 0.5, report["history"]
    assert len(report["history"]) == 4 and (tmp_path / "st" / "student.pt").exists()
    assert not (tmp_path / "st" / "partial.pt").exists()
    res = CliRunner().invoke(cli, ["evaluate", str(tmp_path / "st" / "student.pt"), "--out",
                                   str(tmp_path / "e.json"), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    ev = json.loads((tmp_path / "e.json").read_text())
    assert ev["accuracy"] == pytest.approx(report["test_accuracy"])
    assert sum(map(sum, ev["confusion_matrix"])) == 200 and (tmp_path / "e.png").exists()


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


def test_adaptive_mode_appends_batches_made_against_the_student(tmp_path):
    from test_synthesis import random_teachers, small_cfg, write_teachers

    from fedinv.oneshot.synthesis.synthesize import synthesize
    models, counts = random_teachers(3)
    write_teachers(tmp_path / "t", models, counts)
    synthesize(tmp_path / "t", tmp_path / "s.h5", small_cfg(num_images=24, batch_size=12), progress=False)
    cfg = StudentConfig(model="lenet5", epochs=2, batch_size=12, adaptive_batches=1, device="cpu")
    report = train_student(tmp_path / "s.h5", tmp_path / "st", cfg, teachers_dir=tmp_path / "t", progress=False)
    assert [h["store_images"] for h in report["history"]] == [36, 48]
    assert read_meta(tmp_path / "s.h5")["n_valid"] == 48
    import h5py
    with h5py.File(tmp_path / "s.h5") as f:
        assert sorted(set(f["source"][:, 0].tolist())) == [0, 1, 2, 3]
    # the fresh batches' accuracy (the report's Figure 3): the teachers' agreement with the targets, by hand
    from fedinv.data.batches import normalize
    from fedinv.oneshot.synthesis.ensemble import load_ensemble
    from fedinv.store import read_rows
    images, labels, _ = read_rows(tmp_path / "s.h5", list(range(36, 48)))
    ensemble = load_ensemble(tmp_path / "t", torch.device("cpu"))
    by_hand = (ensemble.ensemble_probs(normalize(images, ensemble.info)).argmax(1) == labels).float().mean().item()
    last = report["history"][-1]
    assert last["fresh_images"] == 12 and last["fresh_teacher_accuracy"] == pytest.approx(by_hand)
    assert 0.0 <= last["fresh_student_accuracy"] <= 1.0


def kill_after_round(monkeypatch, rows, run):
    """Run `run()` with the adaptive round killed once the store holds `rows` rows; then unpatch."""
    import fedinv.oneshot.student.adaptive as st
    real_round = st.adaptive_round

    def killed(store, *args, **kw):
        n = real_round(store, *args, **kw)
        if n == rows:
            raise KeyboardInterrupt
        return n

    monkeypatch.setattr(st, "adaptive_round", killed)
    with pytest.raises(KeyboardInterrupt):
        run()
    monkeypatch.setattr(st, "adaptive_round", real_round)


def test_adaptive_student_killed_after_appending_resumes_to_the_same_result(tmp_path, monkeypatch):
    """A kill between an adaptive round's append and that epoch's checkpoint must not append the
    round twice on resume: store and student end as in an uninterrupted run."""
    from test_synthesis import random_teachers, small_cfg, write_teachers

    from fedinv.oneshot.synthesis.synthesize import synthesize
    models, counts = random_teachers(3)
    write_teachers(tmp_path / "t", models, counts)
    synthesize(tmp_path / "t", tmp_path / "pool.h5", small_cfg(num_images=24, batch_size=12), progress=False)
    for name in ("a.h5", "c.h5"):
        shutil.copy(tmp_path / "pool.h5", tmp_path / name)
    cfg = StudentConfig(model="lenet5", epochs=3, batch_size=12, adaptive_batches=2, adaptive_every=2, device="cpu")
    a = train_student(tmp_path / "a.h5", tmp_path / "a", cfg, teachers_dir=tmp_path / "t", progress=False)
    kill_after_round(monkeypatch, 24 + 4 * 12,  # the epoch-3 round is on disk, its epoch checkpoint is not
                     lambda: train_student(tmp_path / "c.h5", tmp_path / "c", cfg, teachers_dir=tmp_path / "t",
                                           progress=False))
    c = train_student(tmp_path / "c.h5", tmp_path / "c", cfg, teachers_dir=tmp_path / "t", progress=False)
    assert [h["store_images"] for h in c["history"]] == [h["store_images"] for h in a["history"]] == [48, 48, 72]
    assert read_meta(tmp_path / "c.h5")["n_valid"] == 72
    sa = torch.load(tmp_path / "a" / "student.pt", weights_only=True)["state_dict"]
    sc = torch.load(tmp_path / "c" / "student.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(sa[k], sc[k]) for k in sa), "resumed = uninterrupted"


def test_a_finished_student_is_read_back_for_its_settings_and_refused_for_others(tmp_path):
    cfg = StudentConfig(epochs=3)
    assert finished_student(tmp_path, cfg) is None  # nothing finished there
    (tmp_path / "report.json").write_text(json.dumps({"config": to_dict(cfg), "test_accuracy": 0.5}))
    assert finished_student(tmp_path, cfg)["test_accuracy"] == 0.5
    assert finished_student(tmp_path, StudentConfig(epochs=3, device="cuda")) is not None  # run-time field
    with pytest.raises(RunStateError, match=r"other settings \(kd_form\)"):
        finished_student(tmp_path, StudentConfig(epochs=3, kd_form="hard"))
