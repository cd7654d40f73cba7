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
    assert res.exit_code == 130 and "rerun the same command" in res.output


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


def test_a_run_that_fails_before_any_work_leaves_no_folder_a_corrected_rerun_would_refuse(tmp_path):
    """Class 3 of the bad-input sweep: a diverging first epoch left config.json, and the rerun with a sane
    learning rate was then refused as "another config"."""
    out = tmp_path / "run"
    res = CliRunner().invoke(cli, ["-q", "run", str(TINY_TOML), "--out", str(out), "--no-progress",
                                   "--set", "teachers.weight_decay=1e20"])
    assert res.exit_code == 2 and "the loss is nan" in res.output, res.output
    assert not out.exists()
    res = CliRunner().invoke(cli, ["-q", "run", str(TINY_TOML), "--out", str(out), "--no-progress",
                                   "--set", "student.local_weight=1"])  # run gives no local data: refused up front
    assert res.exit_code == 2 and "local_weight needs a node's real data" in res.output and not out.exists()


@pytest.mark.parametrize("args,message", [
    (["view", "STORE", "--out", "OUT/v.png", "--seed", "-1"], "--seed must be in [0, 1e18], got -1"),
    (["view", "STORE", "--out", "OUT/v.png", "--image-size", "-1"], "--image-size must be in [0, 4096], got -1"),
    (["train-student", "--store", "STORE", "--out", "OUT", "--eval-every", "0"], "--eval-every must be in [1, 1e9]"),
])
def test_a_command_own_numeric_options_are_checked_too(tmp_path, args, message):
    from tests.helpers import real_store
    store = tmp_path / "s.h5"
    real_store(store, n=100)
    args = [a.replace("STORE", str(store)).replace("OUT", str(tmp_path / "out")) for a in args]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 2 and message in res.output, res.output
    assert not (tmp_path / "out").exists()


def test_a_stage_that_failed_before_any_work_takes_corrected_settings_in_the_same_run_folder(tmp_path):
    """A student that diverges in its first epoch leaves the teachers and the store (work worth keeping)
    and no student: the rerun with sane settings continues the folder instead of refusing it."""
    out = tmp_path / "run"
    base = ["-q", "run", str(TINY_TOML), "--out", str(out), "--no-progress"]
    res = CliRunner().invoke(cli, [*base, "--set", "student.weight_decay=1e20"])
    assert res.exit_code == 2 and "student epoch 1: the loss is nan" in res.output, res.output
    assert (out / "synthetic.h5").exists() and not (out / "student" / "student.pt").exists()
    res = CliRunner().invoke(cli, base)
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(cli, [*base, "--set", "student.lr=0.05"])  # a finished student: other settings refused
    assert res.exit_code == 2 and "student.lr" in res.output, res.output


@pytest.mark.parametrize("command,config,tables", [
    ("run", TINY_TOML, ("partition", "teachers", "synthesis", "student")),
    ("federate", TINY_TOML.parent / "fmnist-rounds.toml", ("partition", "federate"))])
def test_print_config_gives_toml_that_reads_back_to_the_effective_config_and_seed_sets_every_stage(
        tmp_path, command, config, tables):
    import tomllib

    from fedinv.federated.config import FederatedRunConfig
    res = CliRunner().invoke(cli, [command, str(config), "--seed", "3", "--set", f"{tables[-1]}.seed=7",
                                   "--print-config", "--out", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    printed = tomllib.loads(res.output)
    assert [printed[t]["seed"] for t in tables] == [3] * (len(tables) - 1) + [7]  # an explicit --set wins
    overrides = [f"{t}.seed=3" for t in tables[:-1]] + [f"{tables[-1]}.seed=7"]
    if command == "run":
        assert RunConfig.from_tables(printed) == RunConfig.from_toml(config, overrides)
    else:
        assert FederatedRunConfig.from_dict(printed) == FederatedRunConfig.from_toml(config, overrides)
    assert not (tmp_path / "out").exists(), "printing runs nothing"


@pytest.mark.parametrize("args,shown", [([], True), (["-q"], False), (["-q", "--progress"], True),
                                        (["--no-progress"], False)])
def test_quiet_turns_the_progress_bars_off_unless_asked_for(tmp_path, monkeypatch, args, shown):
    import fedinv.cli.synthesize as synthesize_cli

    seen = {}
    monkeypatch.setattr(synthesize_cli, "synthesize_distributed",
                        lambda *a, progress, **kw: seen.update(progress=progress) or {})
    write_teachers(tmp_path / "t", *random_teachers(2))
    quiet = [a for a in args if a == "-q"]
    rest = [a for a in args if a != "-q"]
    res = CliRunner().invoke(cli, [*quiet, "synthesize", "--teachers", str(tmp_path / "t"),
                                   "--out", str(tmp_path / "s.h5"), "--device", "cpu", *rest])
    assert res.exit_code == 0, res.output
    assert seen["progress"] is shown
