"""Tests of fedinv.oneshot.student.adaptive."""

import shutil

import pytest
import torch

from fedinv.oneshot.student.config import StudentConfig
from fedinv.oneshot.student.train import train_student
from fedinv.oneshot.synthesis.store import copy_synthesis_store
from fedinv.oneshot.synthesis.synthesize import synthesize
from fedinv.store import read_meta, read_rows
from tests.helpers import gen_cfg, random_teachers, small_cfg, write_teachers


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


def test_online_student_on_a_fast_store_resumes_exactly(tmp_path, monkeypatch):
    """New batches are made by the store's own method (the generator carried on from the pool); a
    kill after a round's append and before the epoch checkpoint ends as an uninterrupted run."""
    models, counts = random_teachers(3)
    write_teachers(tmp_path / "t", models, counts)
    synthesize(tmp_path / "t", tmp_path / "pool.h5", gen_cfg(num_images=24), progress=False)
    for name in ("a.h5", "c.h5"):
        copy_synthesis_store(tmp_path / "pool.h5", tmp_path / name)
    cfg = StudentConfig(model="lenet5", epochs=3, batch_size=12, adaptive_batches=2, device="cpu")
    a = train_student(tmp_path / "a.h5", tmp_path / "a", cfg, teachers_dir=tmp_path / "t", progress=False)
    assert [h["store_images"] for h in a["history"]] == [48, 72, 96]
    kill_after_round(monkeypatch, 72, lambda: train_student(tmp_path / "c.h5", tmp_path / "c", cfg,
                                                            teachers_dir=tmp_path / "t", progress=False))
    c = train_student(tmp_path / "c.h5", tmp_path / "c", cfg, teachers_dir=tmp_path / "t", progress=False)
    assert [h["store_images"] for h in c["history"]] == [48, 72, 96]
    for x, y in zip(read_rows(tmp_path / "a.h5"), read_rows(tmp_path / "c.h5")):
        assert torch.equal(x, y)
    sa = torch.load(tmp_path / "a" / "student.pt", weights_only=True)["state_dict"]
    sc = torch.load(tmp_path / "c" / "student.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(sa[k], sc[k]) for k in sa), "resumed = uninterrupted"


def test_adaptive_mode_appends_batches_made_against_the_student(tmp_path):
    from fedinv.oneshot.synthesis.synthesize import synthesize
    from tests.helpers import random_teachers, write_teachers
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


def test_adaptive_student_killed_after_appending_resumes_to_the_same_result(tmp_path, monkeypatch):
    """A kill between an adaptive round's append and that epoch's checkpoint must not append the
    round twice on resume: store and student end as in an uninterrupted run."""
    from fedinv.oneshot.synthesis.synthesize import synthesize
    from tests.helpers import random_teachers, write_teachers
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
