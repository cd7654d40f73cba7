"""Tests of fedinv.oneshot.synthesis.generator."""

import pytest
import torch

import fedinv.oneshot.synthesis.generator as synthesis_generator
import fedinv.oneshot.synthesis.store as synthesis_store
from fedinv.errors import ConfigError, RunStateError
from fedinv.oneshot.synthesis.deepinversion import pixel_bounds
from fedinv.oneshot.synthesis.ensemble import TeacherEnsemble
from fedinv.oneshot.synthesis.store import state_path
from fedinv.oneshot.synthesis.synthesize import synthesize
from fedinv.store import read_meta, read_rows
from tests.helpers import CPU, INFO, gen_cfg, generator_method, random_teachers, write_teachers


def test_the_generator_width_is_the_configs():
    models, counts = random_teachers(2)
    teachers = TeacherEnsemble(models, counts, CPU, INFO)
    for width in (16, 64):
        g = generator_method(teachers, gen_cfg(generator_width=width), None).generator
        convs = [m for m in g.body if isinstance(m, torch.nn.Conv2d)]
        assert [c.out_channels for c in convs] == [width, width // 2, 3]


def test_fast_moves_its_start_and_dense_keeps_one_generator():
    models, counts = random_teachers(3)
    ts = TeacherEnsemble(models, counts, CPU, INFO, batched=False)
    for method in ("fast", "dense"):
        synth = generator_method(ts, gen_cfg(method), None)
        before = [p.detach().clone() for p in synth.generator.parameters()]
        out = synth.invert(torch.arange(12) % 10, 0, torch.Generator().manual_seed(0))
        assert out.x.shape == (12, *INFO.image_shape) and out.teacher_mask > 0
        lo, hi = pixel_bounds(INFO, CPU)
        assert (out.x >= lo - 1e-5).all() and (out.x <= hi + 1e-5).all()
        moved = any(not torch.equal(a, b) for a, b in zip(before, synth.generator.parameters()))
        assert moved, f"{method}: the generator carried to the next batch has learned"
        assert bool(synth.state_dict()["meta_optimizer"]) == (method == "fast")
        assert synth.state_dict()["bn_momentum"], "BN averages are carried (momentum 0.9 by default)"


@pytest.mark.parametrize("method", ["fast", "dense"])
def test_generator_synthesis_is_seeded_and_resumes_exactly_after_a_kill(tmp_path, monkeypatch, method):
    models, counts = random_teachers(3)
    write_teachers(tmp_path / "t", models, counts)
    cfg = gen_cfg(method)
    synthesize(tmp_path / "t", tmp_path / "a.h5", cfg, progress=False)
    synthesize(tmp_path / "t", tmp_path / "b.h5", cfg, progress=False)
    for a, b in zip(read_rows(tmp_path / "a.h5"), read_rows(tmp_path / "b.h5")):
        assert torch.equal(a, b), "same seed, same store"
    other = synthesize(tmp_path / "t", tmp_path / "c.h5", gen_cfg(method, seed=1), progress=False)
    assert other["n_valid"] == 50 and not torch.equal(read_rows(tmp_path / "c.h5")[0], read_rows(tmp_path / "a.h5")[0])

    real_save, calls = synthesis_store.save_torch, {"n": 0}

    def killed_before_third_state(obj, path):  # batch 2's rows are on disk, its state is not
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed")
        real_save(obj, path)

    monkeypatch.setattr(synthesis_store, "save_torch", killed_before_third_state)
    with pytest.raises(KeyboardInterrupt):
        synthesize(tmp_path / "t", tmp_path / "k.h5", cfg, progress=False)
    monkeypatch.setattr(synthesis_store, "save_torch", real_save)
    assert read_meta(tmp_path / "k.h5")["n_valid"] == 36
    stats = synthesize(tmp_path / "t", tmp_path / "k.h5", cfg, resume=True, progress=False)
    assert stats["batches"] == 3, "the batch whose state was lost is made again"
    for a, b in zip(read_rows(tmp_path / "k.h5"), read_rows(tmp_path / "a.h5")):
        assert torch.equal(a, b), "resumed = uninterrupted"
    sa = torch.load(state_path(tmp_path / "a.h5"), weights_only=True)
    sk = torch.load(state_path(tmp_path / "k.h5"), weights_only=True)
    assert sa["rows"] == sk["rows"] == 50
    assert all(torch.equal(v, sk["synthesizer"]["generator"][k]) for k, v in sa["synthesizer"]["generator"].items())


def test_a_store_without_its_generator_state_is_not_continued(tmp_path):
    models, counts = random_teachers(2)
    write_teachers(tmp_path / "t", models, counts)
    synthesize(tmp_path / "t", tmp_path / "a.h5", gen_cfg(num_images=24), progress=False)
    state_path(tmp_path / "a.h5").unlink()
    with pytest.raises(RunStateError, match="generator state .* is missing; copy it with the store"):
        synthesize(tmp_path / "t", tmp_path / "a.h5", gen_cfg(num_images=24), resume=True, progress=False)


def test_coboost_draws_a_fresh_generator_per_batch_and_splits_like_deepinversion(tmp_path):
    models, counts = random_teachers(3)
    ts = TeacherEnsemble(models, counts, CPU, INFO, batched=False)
    synth = generator_method(ts, gen_cfg("coboost", steps=3), None)
    g0, g0_again, g1 = synth.batch_generator(0), synth.batch_generator(0), synth.batch_generator(1)
    assert all(torch.equal(a, b) for a, b in zip(g0.parameters(), g0_again.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(g0.parameters(), g1.parameters()))
    convs = [m for m in g0.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(abs(c.weight.std().item() - 0.02) < 0.005 for c in convs), "DCGAN-style N(0, 0.02) weights"
    out = synth.invert(torch.arange(12) % 10, 0, torch.Generator().manual_seed(0))
    assert out.x.shape == (12, *INFO.image_shape) and synth.state_dict() == {}
    assert gen_cfg("coboost").per_batch, "nothing carries between batches: shardable, no state file"
    write_teachers(tmp_path / "t", models, counts)
    synthesize(tmp_path / "t", tmp_path / "a.h5", gen_cfg("coboost"), progress=False)
    assert not state_path(tmp_path / "a.h5").exists() and read_meta(tmp_path / "a.h5")["n_valid"] == 50
    with pytest.raises(ConfigError, match="bn_momentum = 0"):
        gen_cfg("coboost", bn_momentum=0.5)


def test_coboost_keeps_the_images_of_its_lowest_loss_step(monkeypatch):
    models, counts = random_teachers(2)
    ts = TeacherEnsemble(models, counts, CPU, INFO, batched=False)
    synth = generator_method(ts, gen_cfg("coboost", steps=4), None)
    seen = []
    real = synthesis_generator.InversionObjective.__call__

    def recording(self, x, *a, **k):
        out = real(self, x, *a, **k)
        seen.append((out.loss.item(), x.detach().clone()))
        return out

    monkeypatch.setattr(synthesis_generator.InversionObjective, "__call__", recording)
    out = synth.invert(torch.arange(12) % 10, 0, torch.Generator().manual_seed(0))
    best = min(seen, key=lambda s: s[0])[1]
    assert torch.equal(out.x, best.float())


def test_hard_sample_weighting_leaves_easy_images_out_of_the_ce():
    from fedinv.oneshot.synthesis.losses import masked_cross_entropy
    logits = torch.tensor([[20.0, 0.0, 0.0], [0.0, 0.0, 0.0]])  # sure of class 0; undecided
    y = torch.tensor([0, 0])
    plain = masked_cross_entropy(logits, y)
    hard = masked_cross_entropy(logits, y, hard=1.0)
    undecided = torch.nn.functional.cross_entropy(logits[1:], y[1:])
    assert hard.item() == pytest.approx((2 / 3 * undecided / 2).item(), rel=1e-4)  # (1 - 1/3) x CE, mean over 2
    assert hard < plain
