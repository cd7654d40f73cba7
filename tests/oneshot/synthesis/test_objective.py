"""Tests of fedinv.oneshot.synthesis.objective."""

import json

import pytest
import torch
from click.testing import CliRunner

from fedinv.checkpoint import ModelCheckpoint, save_checkpoint
from fedinv.cli.main import cli
from fedinv.errors import ConfigError
from fedinv.models import build_model
from fedinv.models.generators import to_model_input
from fedinv.oneshot.synthesis.config import SynthesisConfig
from fedinv.oneshot.synthesis.deepinversion import invert_batch, pixel_bounds
from fedinv.oneshot.synthesis.ensemble import TeacherEnsemble
from fedinv.oneshot.synthesis.objective import InversionObjective
from fedinv.oneshot.synthesis.synthesize import synthesize
from tests.helpers import CPU, INFO, gen_cfg, generator_method, model_dict, random_teachers, small_cfg, write_teachers


@pytest.mark.parametrize("method", ["fast", "dense"])
def test_every_method_descends_the_one_objective(method):
    """The loss a method reports at its first step is InversionObjective on its first images,
    computed here independently with the same draws; the per-batch engine's likewise."""
    models, counts = random_teachers(3)
    ts = TeacherEnsemble(models, counts, CPU, INFO, batched=False)
    cfg = gen_cfg(method, bn_momentum=0.0, a_tv_l1=0.1)
    first = {}
    generator_method(ts, cfg, None).invert(torch.arange(12) % 10, 4, torch.Generator().manual_seed(7),
                                               on_step=lambda s, losses: first.setdefault(s, losses))
    gen = torch.Generator().manual_seed(7)
    z = torch.randn(12, cfg.params.nz, generator=gen)
    x = to_model_input(generator_method(ts, cfg, None).generator(z, torch.arange(12) % 10), INFO)
    again = InversionObjective(ts, cfg)(x, torch.arange(12) % 10, 4, gen)
    assert first[0] == pytest.approx(again.parts(), rel=1e-5)

    di = gen_cfg("deepinversion", iterations=1, a_tv_l1=0.1)
    first = {}
    invert_batch(ts, torch.arange(12) % 10, di, batch_index=4, bounds=pixel_bounds(INFO, CPU),
                 gen=torch.Generator().manual_seed(7), amp_dtype=None, on_step=lambda s, l: first.setdefault(s, l))
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(12, *INFO.image_shape, generator=gen)
    assert first[0] == pytest.approx(InversionObjective(ts, di)(x, torch.arange(12) % 10, 4, gen).parts(), rel=1e-5)


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
    stats = json.loads(res.output)
    assert 0 < stats["last_losses"]["comp"] <= 1, "the competition term is on with a student"
    wrong = build_model("lenet5", 3, 7, 16)
    with pytest.raises(ConfigError, match="predicts 7 classes"):
        synthesize(tmp_path / "t", tmp_path / "b.h5", small_cfg(), student=wrong, progress=False)
