from dataclasses import asdict

import pytest
import torch
from click.testing import CliRunner
from conftest import model_dict

from fedinv.checkpoint import TEACHER, ModelCheckpoint, save_checkpoint
from fedinv.cli.main import cli
from fedinv.data.datasets import load_dataset
from fedinv.errors import ConfigError, RunStateError
from fedinv.models import build_model
from fedinv.oneshot.synthesis.config import SynthesisConfig
from fedinv.oneshot.synthesis.deepinversion import invert_batch, pixel_bounds
from fedinv.oneshot.synthesis.ensemble import TeacherEnsemble
from fedinv.oneshot.synthesis.labels import sample_labels, sample_teachers
from fedinv.oneshot.synthesis.synthesize import synthesize
from fedinv.oneshot.teacher_files import load_teacher_folder
from fedinv.store import StoreWriter, SyntheticDataset, read_meta, read_rows

INFO = load_dataset("synthetic-tiny").info


def random_teachers(n=3, name="lenet5", classes=10, seed=0):
    """Teachers with random weights and random BN running statistics (so BN terms are nonzero)."""
    torch.manual_seed(seed)
    models = []
    for _ in range(n):
        m = build_model(name, 3, classes, 16)
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.normal_()
                mod.running_var.uniform_(0.5, 2.0)
        models.append(m.eval())
    counts = torch.randint(1, 40, (n, classes))
    counts[0, :3] = 0  # teacher 0 never saw labels 0-2
    return models, counts


def write_teachers(folder, models, counts, info=INFO, name="lenet5"):
    folder.mkdir(parents=True, exist_ok=True)
    for i, (m, c) in enumerate(zip(models, counts)):
        shape = info.image_shape
        save_checkpoint(ModelCheckpoint(TEACHER, model_dict(name, shape[0], len(c), shape[1]), m.state_dict(),
                                        label_counts=c.tolist(), extra={"node": i, "dataset": asdict(info)}),
                        folder / f"node-{i}.pt")


@pytest.mark.parametrize("head_mask,weighted", [(False, False), (True, False), (True, True)])
def test_batched_and_looped_paths_agree(head_mask, weighted):
    models, counts = random_teachers(4)
    batched = TeacherEnsemble(models, counts, torch.device("cpu"), INFO, batched=True)
    looped = TeacherEnsemble(models, counts, torch.device("cpu"), INFO, batched=False)
    x = torch.randn(16, 3, 16, 16, requires_grad=True)
    y = torch.randint(0, 10, (16,))
    idx = torch.tensor([0, 1, 3])
    seen, weight = batched.masks(head_mask, weighted)
    student = torch.randn(16, 10)
    a = batched.terms(x, y, idx, seen, weight, student)
    b = looped.terms(x, y, idx, seen, weight, student)
    assert a.shape == (3, 3)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    ga, = torch.autograd.grad(a.sum(), x)
    gb, = torch.autograd.grad(b.sum(), x)
    torch.testing.assert_close(ga, gb, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(batched.ensemble_probs(x), looped.ensemble_probs(x))


def test_masking_and_weighting_change_what_they_should():
    models, counts = random_teachers(3)
    ts = TeacherEnsemble(models, counts, torch.device("cpu"), INFO)
    x = torch.randn(8, 3, 16, 16)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])  # labels teacher 0 never saw
    idx = torch.tensor([0, 1])
    masked = ts.terms(x, y, idx, *ts.masks(True, False))
    plain = ts.terms(x, y, idx, *ts.masks(False, False))
    assert masked[0, 0].item() == 0.0 and plain[0, 0].item() > 0, "teacher 0 knows none of these labels"
    assert masked[1, 0].item() == pytest.approx(plain[1, 0].item()), "teacher 1 saw every label: mask is a no-op"
    torch.testing.assert_close(masked[:, 1], plain[:, 1]), "BN terms do not depend on labels"
    weighted = ts.terms(x, y, idx, *ts.masks(True, True))
    assert weighted[1, 0].item() < masked[1, 0].item(), "eq. 5 shares are < 1"


def test_label_samplers():
    counts = torch.tensor([[90, 10, 0], [0, 0, 100]])
    gen = torch.Generator().manual_seed(0)
    y = sample_labels("proportional", counts, 20000, gen)
    freq = torch.bincount(y, minlength=3).float() / len(y)
    torch.testing.assert_close(freq, torch.tensor([0.45, 0.05, 0.5]), atol=0.02, rtol=0)
    y = sample_labels("balanced", counts, 100, gen)
    assert torch.bincount(y, minlength=3).tolist() == [25, 25, 50]
    assert set(sample_labels("uniform", counts, 300, gen).tolist()) == {0, 1, 2}
    with pytest.raises(ConfigError, match="unknown label sampler 'x'; known: balanced, proportional, uniform"):
        sample_labels("x", counts, 4, gen)
    picks = sample_teachers(5, 3, gen)
    assert len(set(picks.tolist())) == 3 and sample_teachers(5, 0, gen).tolist() == [0, 1, 2, 3, 4]


def test_invert_batch_lowers_the_loss_stays_in_range_and_is_reproducible():
    models, counts = random_teachers(3)
    ts = TeacherEnsemble(models, counts, torch.device("cpu"), INFO)
    cfg = SynthesisConfig.of(iterations=25, batch_size=8, lr=0.05, teachers_per_step=2, device="cpu")
    bounds = pixel_bounds(INFO, torch.device("cpu"))
    y = torch.arange(8) % 10
    seen = []
    run = lambda: invert_batch(ts, y, cfg, batch_index=0, bounds=bounds, gen=torch.Generator().manual_seed(1),  # noqa
                               amp_dtype=None, on_step=lambda step, losses: seen.append(losses["loss"]),
                               log_every=1)
    a = run()
    assert seen[-1] < seen[0]
    lo, hi = bounds
    assert (a.x >= lo - 1e-6).all() and (a.x <= hi + 1e-6).all()
    b = run()
    assert torch.equal(a.x, b.x)
    assert a.teacher_mask == 0b111


def test_cycling_uses_one_teacher_per_batch():
    models, counts = random_teachers(3)
    ts = TeacherEnsemble(models, counts, torch.device("cpu"), INFO)
    cfg = SynthesisConfig.of(iterations=3, batch_size=4, teachers_per_step=1, device="cpu")
    out = invert_batch(ts, torch.zeros(4, dtype=torch.long) + 5, cfg, batch_index=4,
                       bounds=pixel_bounds(INFO, torch.device("cpu")), gen=torch.Generator(), amp_dtype=None)
    assert out.teacher_mask == 1 << (4 % 3)


def test_fixed_teachers_keep_one_sample_for_a_whole_batch():
    from fedinv.oneshot.synthesis.objective import InversionObjective

    models, counts = random_teachers(5)
    ts = TeacherEnsemble(models, counts, torch.device("cpu"), INFO)
    x, y = torch.randn(4, 3, 16, 16), torch.zeros(4, dtype=torch.long)

    def sampled(fixed: bool, batch: int) -> list[list[int]]:
        objective = InversionObjective(ts, SynthesisConfig.of(teachers_per_step=2, fixed_teachers=fixed, device="cpu"))
        gen = torch.Generator().manual_seed(batch)
        return [objective(x, y, batch, gen).teachers for _ in range(8)]

    per_step, fixed = sampled(False, 0), sampled(True, 0)
    assert len({tuple(t) for t in per_step}) > 1 and len({tuple(t) for t in fixed}) == 1
    assert {tuple(sampled(True, b)[0]) for b in range(10)} != {tuple(fixed[0])}  # another sample per batch
    assert sampled(True, 3) == sampled(True, 3)  # from the seed and the batch


def legacy_flat(config: dict) -> dict:
    """A store's config (today's form, from its attributes) in the flat form fedinv 0.1 wrote: every
    method's settings side by side, 0 for "the method's default"."""
    config = dict(config)
    method = config["method"]
    params = config.pop(method)
    flat = {"iterations": 1000, "lr": 0.1, "steps": 0, "lr_g": 0.0, "lr_z": 0.01, "meta_lr": 0.0,
            "bn_momentum": 0.9, "nz": 100, "generator_width": 64, "conditional": False}
    flat.update({k: (0.0 if v is None else v) for k, v in params.items()})
    return {**config, **flat}


def small_cfg(**kw):
    base = dict(num_images=50, batch_size=12, device="cpu", teachers_per_step=2)
    if kw.get("method", "deepinversion") == "deepinversion":
        base["iterations"] = 4
    base.update(kw)
    return SynthesisConfig.of(**base)


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
    with pytest.raises(RunStateError, match="exists; pass --resume"):
        synthesize(tmp_path / "t", tmp_path / "s.h5", small_cfg(), progress=False)
    with pytest.raises(RunStateError, match="other settings"):
        synthesize(tmp_path / "t", tmp_path / "s.h5", small_cfg(iterations=5), resume=True, progress=False)


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


def test_a_store_from_before_the_methods_continues(tmp_path):
    """A store whose recorded config predates the fields added since (at their defaults) is the same
    run and is continued, not refused as made with other settings."""
    import json

    import h5py
    models, counts = random_teachers(2)
    write_teachers(tmp_path / "t", models, counts)
    synthesize(tmp_path / "t", tmp_path / "old.h5", small_cfg(num_images=24), progress=False)
    with h5py.File(tmp_path / "old.h5", "r+") as f:
        config = legacy_flat(json.loads(f.attrs["config"]))
        for name in ("method", "steps", "lr_g", "lr_z", "meta_lr", "bn_momentum", "nz", "conditional"):
            del config[name]
        f.attrs["config"] = json.dumps(config, sort_keys=True)
    with pytest.raises(RunStateError, match="other settings"):
        synthesize(tmp_path / "t", tmp_path / "old.h5", small_cfg(num_images=24, method="fast"), resume=True,
                   progress=False)
    stats = synthesize(tmp_path / "t", tmp_path / "old.h5", small_cfg(num_images=24), resume=True, progress=False)
    assert stats["batches"] == 0 and stats["n_valid"] == 24


def test_reader_with_two_dataloader_workers(tmp_path):
    models, counts = random_teachers(2)
    write_teachers(tmp_path / "t", models, counts)
    synthesize(tmp_path / "t", tmp_path / "s.h5", small_cfg(num_images=30, batch_size=10), progress=False)
    ds = SyntheticDataset(tmp_path / "s.h5")
    loader = torch.utils.data.DataLoader(ds, batch_size=7, num_workers=2, shuffle=False)
    xs, ys, softs = zip(*loader)
    x, y = torch.cat(xs), torch.cat(ys)
    images, labels, soft = read_rows(tmp_path / "s.h5")
    assert torch.equal(y, labels) and torch.equal(torch.cat(softs), soft)
    mean, std = torch.tensor(INFO.mean).view(1, -1, 1, 1), torch.tensor(INFO.std).view(1, -1, 1, 1)
    torch.testing.assert_close(x, (images.float() / 255 - mean) / std)


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


def test_cli_synthesize_view_and_audit(tmp_path):
    models, counts = random_teachers(2)
    write_teachers(tmp_path / "t", models, counts)
    runner = CliRunner()
    res = runner.invoke(cli, ["-q", "synthesize", "--teachers", str(tmp_path / "t"), "--out", str(tmp_path / "s.h5"),
                              "--num-images", "20", "--batch-size", "10", "--iterations", "2", "--device", "cpu",
                              "--no-progress"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli, ["view", str(tmp_path / "s.h5"), "--out", str(tmp_path / "g.png"), "--per-class", "3",
                              "--classes", "0-4"])
    assert res.exit_code == 0, res.output
    from PIL import Image
    assert Image.open(tmp_path / "g.png").size[1] == 5 * (16 + 2) * 2 + 2 * 2
    res = runner.invoke(cli, ["view", "--dataset", "synthetic-tiny", "--out", str(tmp_path / "d.png")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli, ["audit", "--store", str(tmp_path / "s.h5"),
                              "--reference", str(tmp_path / "t" / "node-0.pt"),
                              "--out", str(tmp_path / "a.json"), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    import json
    report = json.loads((tmp_path / "a.json").read_text())
    assert len(report["per_class"]) == 10 and 0 <= report["reference_agreement"] <= 1
    assert (tmp_path / "a.png").exists()


def test_adaptive_mode_uses_the_student(tmp_path):
    models, counts = random_teachers(3)
    write_teachers(tmp_path / "t", models, counts)
    student = build_model("lenet5", 3, 10, 16)
    save_checkpoint(ModelCheckpoint("fedinv.student", model_dict("lenet5", 3, 10, 16), student.state_dict()),
                    tmp_path / "student.pt")
    res = CliRunner().invoke(cli, ["-q", "synthesize", "--teachers", str(tmp_path / "t"),
                                   "--out", str(tmp_path / "a.h5"),
                                   "--num-images", "8", "--batch-size", "8", "--iterations", "2", "--device", "cpu",
                                   "--student", str(tmp_path / "student.pt"), "--no-progress"])
    assert res.exit_code == 0, res.output
    import json
    stats = json.loads(res.output)
    assert 0 < stats["last_losses"]["comp"] <= 1, "the competition term is on with a student"
    wrong = build_model("lenet5", 3, 7, 16)
    with pytest.raises(ConfigError, match="predicts 7 classes"):
        synthesize(tmp_path / "t", tmp_path / "b.h5", small_cfg(), student=wrong, progress=False)


@pytest.mark.parametrize("with_student", [False, True])
def test_engine_paths_give_the_same_images(with_student):
    """The looped path back-propagates teacher by teacher, the batched one once: same gradients."""
    models, counts = random_teachers(3)
    student = build_model("lenet5", 3, 10, 16).eval() if with_student else None
    cfg = SynthesisConfig.of(iterations=5, batch_size=8, teachers_per_step=2, device="cpu", a_tv_l1=0.1, a_l2=0.01)
    bounds = pixel_bounds(INFO, torch.device("cpu"))
    out = []
    for batched in (True, False):
        ts = TeacherEnsemble([m for m in models], counts, torch.device("cpu"), INFO, batched=batched)
        out.append(invert_batch(ts, torch.arange(8), cfg, batch_index=0, bounds=bounds,
                                gen=torch.Generator().manual_seed(3), amp_dtype=None, student=student))
    torch.testing.assert_close(out[0].x, out[1].x, rtol=1e-4, atol=1e-5)
    assert out[0].losses == pytest.approx(out[1].losses, rel=1e-4, abs=1e-6)
