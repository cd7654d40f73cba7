"""Tests of fedinv.oneshot.synthesis.labels."""

import pytest
import torch

from fedinv.errors import ConfigError
from fedinv.oneshot.synthesis.ensemble import load_ensemble
from fedinv.oneshot.synthesis.labels import sample_labels, sample_teachers
from fedinv.oneshot.synthesis.method import make_synthesizer
from fedinv.oneshot.synthesis.store import make_batch
from fedinv.oneshot.synthesis.synthesize import synthesize
from fedinv.store import read_rows
from tests.helpers import gen_cfg, random_teachers, write_teachers


def test_every_method_asks_for_the_same_labels(tmp_path):
    """Batch b's labels are the first draw of stream (seed, b) whatever the method, so stores of one
    seed made by different methods hold the same labels in the same order."""
    models, counts = random_teachers(2)
    write_teachers(tmp_path / "t", models, counts)
    labels, one_step = [], {"deepinversion": {"iterations": 1}, "fast": {"steps": 1}, "dense": {"steps": 1}}
    for method in ("deepinversion", "fast", "dense"):
        synthesize(tmp_path / "t", tmp_path / f"{method}.h5", gen_cfg(method, num_images=24, **one_step[method]),
                   progress=False)
        labels.append(read_rows(tmp_path / f"{method}.h5")[1])
    assert torch.equal(labels[0], labels[1]) and torch.equal(labels[0], labels[2])


def test_label_samplers():
    counts = torch.tensor([[90, 10, 0], [0, 0, 100]])
    gen = torch.Generator().manual_seed(0)
    y = sample_labels("proportional", counts, 20000, gen)
    freq = torch.bincount(y, minlength=3).float() / len(y)
    torch.testing.assert_close(freq, torch.tensor([0.45, 0.05, 0.5]), atol=0.02, rtol=0)
    y = sample_labels("balanced", counts, 100, gen)
    assert torch.bincount(y, minlength=3).tolist() == [25, 25, 50]
    assert set(sample_labels("uniform", counts, 300, gen).tolist()) == {0, 1, 2}
    assert set(sample_labels("local", counts[[1]], 50, gen).tolist()) == {2}  # only the rows it is given
    with pytest.raises(ConfigError, match="unknown label sampler 'x'; known: balanced, local, proportional, uniform"):
        sample_labels("x", counts, 4, gen)
    picks = sample_teachers(5, 3, gen)
    assert len(set(picks.tolist())) == 3 and sample_teachers(5, 0, gen).tolist() == [0, 1, 2, 3, 4]


def test_local_labels_follow_each_batchs_own_teachers(tmp_path):
    """With cycling (batch b uses teacher b mod N), label_sampler local draws batch b's labels from
    teacher b mod N's class counts only: teacher 0 never saw labels 0-2, so its batches hold none."""
    models, counts = random_teachers(2)
    write_teachers(tmp_path / "t", models, counts)
    cfg = gen_cfg("deepinversion", num_images=48, teachers_per_step=1, label_sampler="local", iterations=1)
    synthesize(tmp_path / "t", tmp_path / "s.h5", cfg, progress=False)
    labels = read_rows(tmp_path / "s.h5")[1]
    teacher = torch.arange(48) // 12 % 2  # rows in batch order, 12 a batch
    assert not set(labels[teacher == 0].tolist()) & {0, 1, 2}
    assert set(labels[teacher == 1].tolist()) & {0, 1, 2}  # teacher 1 knows them all


def test_local_labels_need_teachers_fixed_for_the_batch():
    with pytest.raises(ConfigError, match="label_sampler local .* teachers_per_step 1 .* got teachers_per_step 2"):
        gen_cfg("deepinversion", label_sampler="local")
    for fixed in ({"teachers_per_step": 0}, {"fixed_teachers": True}):
        assert gen_cfg("deepinversion", label_sampler="local", **fixed).label_sampler == "local"


def test_local_labels_of_a_teacher_left_without_counts_come_from_all_nodes(tmp_path):
    """A claims check may zero a node's counts; its batches then draw from every node's counts."""
    models, counts = random_teachers(2)
    write_teachers(tmp_path / "t", models, counts)
    cfg = gen_cfg("deepinversion", num_images=24, teachers_per_step=1, label_sampler="local", iterations=1)
    synth = make_synthesizer(load_ensemble(tmp_path / "t", torch.device("cpu")), cfg, None)
    synth.teachers.use_counts(torch.stack([counts[0], torch.zeros_like(counts[1])]))
    for b in (0, 1):  # teacher 0's own labels; teacher 1's (none left) from node 0's, the only counts left
        labels = make_batch(synth, b, 12)[0][1]
        assert not set(labels.tolist()) & {0, 1, 2}
