"""Tests of fedinv.cli.main."""

import dataclasses

import pytest
from click.testing import CliRunner

from fedinv.cli.main import cli
from fedinv.errors import ConfigError
from fedinv.oneshot.pipeline import RunConfig
from tests.helpers import TINY_TOML, random_teachers, write_teachers


def test_an_interrupted_command_says_how_to_continue(tmp_path, monkeypatch):
    import fedinv.cli.synthesize as cmd

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cmd, "synthesize_distributed", interrupted)
    models, counts = random_teachers(2)
    write_teachers(tmp_path / "t", models, counts)
    res = CliRunner().invoke(cli, ["synthesize", "--teachers", str(tmp_path / "t"), "--out", str(tmp_path / "s.h5"),
                                   "--device", "cpu"])
    assert res.exit_code == 130 and "--resume" in res.output


def test_a_run_that_cannot_start_writes_nothing_and_device_is_no_change(tmp_path):


    from fedinv.oneshot.pipeline import run_pipeline

    cfg = RunConfig.from_toml(TINY_TOML)
    bad = dataclasses.replace(cfg, student=dataclasses.replace(cfg.student, model="resnet19"))
    with pytest.raises(ConfigError, match="unknown model 'resnet19'"):
        run_pipeline(bad, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()  # the folder it made, empty, went with the failure
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(__import__("json").dumps(
        dataclasses.replace(cfg, teachers=dataclasses.replace(cfg.teachers, device="cuda")).to_dict()))
    from fedinv.train.resume import changes
    assert changes(__import__("json").loads((tmp_path / "run" / "config.json").read_text()), cfg) == []
