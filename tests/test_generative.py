"""The generator methods (fast, dense): one objective with the per-batch engine, determinism,
exact resume of synthesis and of the online student, BN momentum, end to end through `fedinv run`."""

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from test_student import kill_after_round
from test_synthesis import INFO, legacy_flat, random_teachers, write_teachers

import fedinv.oneshot.synthesis.store as methods
from fedinv.cli.main import cli
from fedinv.errors import ConfigError, RunStateError
from fedinv.models.generators import to_model_input
from fedinv.oneshot.student.config import StudentConfig
from fedinv.oneshot.student.train import train_student
from fedinv.oneshot.synthesis.config import SynthesisConfig
from fedinv.oneshot.synthesis.deepinversion import invert_batch, pixel_bounds
from fedinv.oneshot.synthesis.ensemble import TeacherEnsemble
from fedinv.oneshot.synthesis.registry import method_class
from fedinv.oneshot.synthesis.hooks import BNMomentum
from fedinv.oneshot.synthesis.objective import InversionObjective
from fedinv.oneshot.synthesis.store import copy_synthesis_store, state_path
from fedinv.oneshot.synthesis.synthesize import synthesize
from fedinv.store import read_meta, read_rows

CPU = torch.device("cpu")
CONFIGS = Path(__file__).parent.parent / "assets" / "configs"


def gen_cfg(method="fast", **kw):
    base = dict(method=method, num_images=50, batch_size=12, teachers_per_step=2, device="cpu")
    if method in ("fast", "dense"):
        base["steps"] = 2
    base.update(kw)
    return SynthesisConfig.of(**base)


def GeneratorSynthesizer(teachers, cfg, amp_dtype):
    """The registered synthesizer of cfg.method (fast or dense here)."""
    return method_class(cfg.method)(teachers, cfg, amp_dtype)


@pytest.mark.parametrize("method", ["fast", "dense"])
def test_every_method_descends_the_one_objective(method):
    """The loss a method reports at its first step is InversionObjective on its first images,
    computed here independently with the same draws; the per-batch engine's likewise."""
    models, counts = random_teachers(3)
    ts = TeacherEnsemble(models, counts, CPU, INFO, batched=False)
    cfg = gen_cfg(method, bn_momentum=0.0, a_tv_l1=0.1)
    first = {}
    GeneratorSynthesizer(ts, cfg, None).invert(torch.arange(12) % 10, 4, torch.Generator().manual_seed(7),
                                               on_step=lambda s, losses: first.setdefault(s, losses))
    gen = torch.Generator().manual_seed(7)
    z = torch.randn(12, cfg.params.nz, generator=gen)
    x = to_model_input(GeneratorSynthesizer(ts, cfg, None).generator(z, torch.arange(12) % 10), INFO)
    again = InversionObjective(ts, cfg)(x, torch.arange(12) % 10, 4, gen)
    assert first[0] == pytest.approx(again.parts(), rel=1e-5)

    di = gen_cfg("deepinversion", iterations=1, a_tv_l1=0.1)
    first = {}
    invert_batch(ts, torch.arange(12) % 10, di, batch_index=4, bounds=pixel_bounds(INFO, CPU),
                 gen=torch.Generator().manual_seed(7), amp_dtype=None, on_step=lambda s, l: first.setdefault(s, l))
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(12, *INFO.image_shape, generator=gen)
    assert first[0] == pytest.approx(InversionObjective(ts, di)(x, torch.arange(12) % 10, 4, gen).parts(), rel=1e-5)


def test_bn_momentum_blends_and_averages_by_hand():
    m = BNMomentum(0.9, 2)
    assert m.blender(0) is None, "a teacher's first batch is compared as it is"
    m.update(0, [(torch.tensor([1.0]), torch.tensor([2.0]))])
    m.update(0, [(torch.tensor([3.0]), torch.tensor([4.0]))])
    (mean, var), = m.average[0]
    assert mean.item() == pytest.approx(0.9 * 1 + 0.1 * 3) and var.item() == pytest.approx(0.9 * 2 + 0.1 * 4)
    means, variances = m.blender(0)([torch.tensor([10.0])], [torch.tensor([20.0])])
    assert means[0].item() == pytest.approx(0.1 * 10 + 0.9 * 1.2)
    assert variances[0].item() == pytest.approx(0.1 * 20 + 0.9 * 2.2)
    copy = BNMomentum(0.9, 2)
    copy.load_state_dict(m.state_dict())
    assert copy.average[1] is None and torch.equal(copy.average[0][0][0], m.average[0][0][0])


def test_an_unconditional_generator_draws_the_class_from_the_code_alone():
    from fedinv.models.generators import ImageGenerator
    g = ImageGenerator(8, 10, 3, 16, width=16, conditional=False).eval()
    z = torch.randn(4, 8)
    assert g.fc_y is None
    assert torch.equal(g(z, torch.zeros(4, dtype=torch.long)), g(z, torch.full((4,), 7)))
    c = ImageGenerator(8, 10, 3, 16, width=16).eval()
    assert not torch.equal(c(z, torch.zeros(4, dtype=torch.long)), c(z, torch.full((4,), 7)))


def test_the_generator_width_is_the_configs():
    models, counts = random_teachers(2)
    teachers = TeacherEnsemble(models, counts, CPU, INFO)
    for width in (16, 64):
        g = GeneratorSynthesizer(teachers, gen_cfg(generator_width=width), None).generator
        convs = [m for m in g.body if isinstance(m, torch.nn.Conv2d)]
        assert [c.out_channels for c in convs] == [width, width // 2, 3]


def test_a_fast_store_from_before_the_width_option_continues_at_its_width(tmp_path):
    """Stores of fast made before --generator-width were made at 128; the default is now 64."""
    import h5py

    write_teachers(tmp_path / "t", *random_teachers(2))
    cfg = gen_cfg(num_images=24, generator_width=128)
    synthesize(tmp_path / "t", tmp_path / "old.h5", cfg, progress=False)
    with h5py.File(tmp_path / "old.h5", "r+") as f:
        config = legacy_flat(json.loads(f.attrs["config"]))
        del config["generator_width"]
        f.attrs["config"] = json.dumps(config, sort_keys=True)
    with pytest.raises(RunStateError, match=r"other settings \(fast\.generator_width\)"):
        synthesize(tmp_path / "t", tmp_path / "old.h5", gen_cfg(num_images=24), resume=True, progress=False)
    stats = synthesize(tmp_path / "t", tmp_path / "old.h5", cfg, resume=True, progress=False)
    assert stats["n_valid"] == 24 and stats["batches"] == 0


def test_fast_moves_its_start_and_dense_keeps_one_generator():
    models, counts = random_teachers(3)
    ts = TeacherEnsemble(models, counts, CPU, INFO, batched=False)
    for method in ("fast", "dense"):
        synth = GeneratorSynthesizer(ts, gen_cfg(method), None)
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

    real_save, calls = methods.save_torch, {"n": 0}

    def killed_before_third_state(obj, path):  # batch 2's rows are on disk, its state is not
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed")
        real_save(obj, path)

    monkeypatch.setattr(methods, "save_torch", killed_before_third_state)
    with pytest.raises(KeyboardInterrupt):
        synthesize(tmp_path / "t", tmp_path / "k.h5", cfg, progress=False)
    monkeypatch.setattr(methods, "save_torch", real_save)
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


def test_generator_methods_refuse_what_they_cannot_do(tmp_path):
    models, counts = random_teachers(2)
    write_teachers(tmp_path / "t", models, counts)
    with pytest.raises(ConfigError, match="runs in one process"):
        synthesize(tmp_path / "t", tmp_path / "s.h5", gen_cfg(), shard=(0, 2), progress=False)
    assert not (tmp_path / "s.h5").exists()
    with pytest.raises(ConfigError, match="bn_momentum runs on the looped"):
        gen_cfg(batched="batched")
    with pytest.raises(ConfigError, match="unknown synthesis method 'nope'; known: deepinversion, dense, fast"):
        gen_cfg("nope")
    with pytest.raises(ConfigError, match=r"bn_momentum must be in \[0, 1\)"):
        gen_cfg(bn_momentum=1.0)


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


@pytest.mark.parametrize("method", ["fast", "dense"])
def test_fedinv_run_view_and_audit_per_method(tmp_path, method):
    run = tmp_path / "run"
    runner = CliRunner()
    res = runner.invoke(cli, ["-q", "run", str(CONFIGS / "tiny.toml"), "--out", str(run),
                              "--set", f'synthesis.method="{method}"', "--set", f"synthesis.{method}.steps=3"])
    assert res.exit_code == 0, res.output
    summary = json.loads((run / "summary.json").read_text())
    assert 0 <= summary["student_accuracy"] <= 1 and summary["synthetic_images"] == 96
    assert read_meta(run / "synthetic.h5")["config"]["method"] == method
    assert state_path(run / "synthetic.h5").is_file()
    res = runner.invoke(cli, ["view", str(run / "synthetic.h5"), "--out", str(tmp_path / "g.png")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli, ["audit", "--store", str(run / "synthetic.h5"), "--reference",
                              str(run / "teachers" / "node-0.pt"), "--out", str(tmp_path / "a.json"),
                              "--device", "cpu"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli, ["-q", "run", str(CONFIGS / "tiny.toml"), "--out", str(run),
                              "--set", f'synthesis.method="{method}"', "--set", f"synthesis.{method}.steps=3"])
    assert res.exit_code == 0, res.output
    assert json.loads((run / "summary.json").read_text())["student_accuracy"] == summary["student_accuracy"]


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
