"""Tests of fedinv.oneshot.synthesis.config and .registry: each method's own settings, refused where they
do not apply, and a method registered by name."""

import dataclasses

import pytest
import torch
from click.testing import CliRunner

from fedinv.cli.main import cli
from fedinv.config import option, to_dict
from fedinv.errors import ConfigError
from fedinv.oneshot.pipeline import RunConfig
from fedinv.oneshot.synthesis.config import SynthesisConfig
from fedinv.oneshot.synthesis.dense import DenseParams
from fedinv.oneshot.synthesis.method import Inverted
from fedinv.oneshot.synthesis.registry import METHODS, SynthesisMethod, method_class
from fedinv.oneshot.synthesis.synthesize import synthesize
from fedinv.store import read_meta
from tests.helpers import gen_cfg, random_teachers, write_teachers


def test_generator_methods_refuse_what_they_cannot_do(tmp_path):
    models, counts = random_teachers(2)
    write_teachers(tmp_path / "t", models, counts)
    with pytest.raises(ConfigError, match="runs in one process"):
        synthesize(tmp_path / "t", tmp_path / "s.h5", gen_cfg(), shard=(0, 2), progress=False)
    assert not (tmp_path / "s.h5").exists()
    with pytest.raises(ConfigError, match="bn_momentum runs on the looped"):
        gen_cfg(batched="batched")
    with pytest.raises(ConfigError, match="unknown synthesis method 'nope'; known: coboost, deepinversion, dense, "
                                          "fast"):
        gen_cfg("nope")
    with pytest.raises(ConfigError, match=r"bn_momentum must be in \[0, 1\)"):
        gen_cfg(bn_momentum=1.0)


@pytest.mark.parametrize("method", ["deepinversion", "fast", "dense"])
def test_each_method_keeps_its_settings_in_its_own_table(method):
    cfg = SynthesisConfig.of(method, num_images=64)
    saved = to_dict(cfg)
    assert saved[method] == to_dict(cfg.params) and not set(METHODS) - {method} & set(saved)
    assert SynthesisConfig.from_dict(saved) == cfg
    assert isinstance(cfg.params, method_class(method).Params)
    assert SynthesisConfig.of("fast").params.reptile_lr == 5 * 3e-3, "Fast-Datafree: meta lr = steps x lr_g"
    assert SynthesisConfig.of("fast", steps=10).params.reptile_lr == 10 * 3e-3
    assert SynthesisConfig.of("fast", meta_lr=0.1).params.reptile_lr == 0.1


def test_a_setting_the_chosen_method_does_not_take_is_an_error_naming_it(tmp_path):
    with pytest.raises(ConfigError, match=r"iterations is no setting of the synthesis config or of method 'fast' "
                                          r"\(its settings: bn_momentum, conditional"):
        SynthesisConfig.of("fast", iterations=3)
    toml = tmp_path / "run.toml"
    toml.write_text('[synthesis]\nmethod = "fast"\niterations = 5\n')
    with pytest.raises(ConfigError, match=r"synthesis.iterations does not apply to method 'fast'; its settings: "
                                          r"steps, lr_g, .* \(table \[synthesis.fast\]\)"):
        RunConfig.from_toml(toml)
    toml.write_text('[synthesis]\nmethod = "fast"\n[synthesis.dense]\nstepz = 5\n')
    with pytest.raises(ConfigError, match=r"unknown DenseParams field\(s\) \['stepz'\]"):
        RunConfig.from_toml(toml)  # another method's table is checked, though this run does not use it
    toml.write_text('[synthesis]\nmethod = "fast"\n[synthesis.fast]\nsteps = 7\n[synthesis.deepinversion]\n'
                    'iterations = 9\n')
    cfg = RunConfig.from_toml(toml).synthesis
    assert cfg.params.steps == 7 and cfg.with_method("deepinversion", iterations=9).params.iterations == 9
    assert cfg.with_method("fast") == cfg and cfg.with_method("fast", lr_z=0.0).params.steps == 7
    assert cfg.with_method("dense").params == DenseParams()
    write_teachers(tmp_path / "t", *random_teachers(2))
    res = CliRunner().invoke(cli, ["synthesize", "--teachers", str(tmp_path / "t"), "--out", str(tmp_path / "s.h5"),
                                   "--method", "fast", "--iterations", "5", "--device", "cpu"])
    assert res.exit_code == 2 and "--iterations does not apply to --method fast; its options: --bn-momentum" \
        in res.output
    assert not (tmp_path / "s.h5").exists()
    res = CliRunner().invoke(cli, ["synthesize", "--help"])
    assert "deepinversion (--method): gradient steps on the pixels per batch (in [1, 1e9]) [default: 1000]" \
        in " ".join(res.output.split())
    assert ("coboost, dense, fast (--method): generator steps per batch (in [1, 1e9]) "
            "[default: coboost 30, dense 30, fast 5]" in " ".join(res.output.split()))


def test_a_new_method_is_one_class_registered_by_name(tmp_path, monkeypatch):
    """A method this file defines (noise, rescaled) runs through the whole synthesis run and its store."""

    @dataclasses.dataclass(frozen=True)
    class NoiseParams:
        scale: float = option(0.5, "how far from the mean image")

    class Noise(SynthesisMethod):
        name, Params = "noise", NoiseParams

        def __init__(self, teachers, cfg, amp_dtype):
            self.teachers, self.cfg = teachers, cfg

        def invert(self, y, batch_index, gen, student=None, on_step=None):
            x = self.cfg.params.scale * torch.randn(len(y), *self.teachers.image_shape, generator=gen)
            return Inverted(x, y, {"loss": 0.0}, 1)

        def state_dict(self):
            return {}

        def load_state_dict(self, state):
            pass

    monkeypatch.setitem(METHODS, "noise", Noise)
    write_teachers(tmp_path / "t", *random_teachers(2))
    cfg = SynthesisConfig.of("noise", scale=0.25, num_images=24, batch_size=12, device="cpu")
    stats = synthesize(tmp_path / "t", tmp_path / "s.h5", cfg, progress=False)
    assert stats["n_valid"] == 24 and read_meta(tmp_path / "s.h5")["config"]["noise"] == {"scale": 0.25}
