"""Tests of fedinv.config."""

import re

import pytest
from click.testing import CliRunner

from fedinv.cli.main import cli
from fedinv.errors import ConfigError
from fedinv.oneshot.pipeline import RunConfig
from tests.helpers import TINY_TOML


@pytest.mark.parametrize("table,message", [
    ('[synthesis]\nnum_images = "96"\n', r"SynthesisConfig.num_images must be int, got '96' \(str\)"),
    ("[partition]\nnum_nodes = 3.7\n", r"PartitionConfig.num_nodes must be int, got 3.7 \(float\)"),
    ("[partition]\nalpha = true\n", r"PartitionConfig.alpha must be float, got True \(bool\)")])
def test_toml_values_of_the_wrong_type_name_field_type_and_value(tmp_path, table, message):
    (tmp_path / "c.toml").write_text(table)
    with pytest.raises(ConfigError, match=message):
        RunConfig.from_toml(tmp_path / "c.toml")


def test_set_overrides_fields_of_the_toml_type_checked(tmp_path):

    from fedinv.federated.config import FederatedRunConfig

    cfg = RunConfig.from_toml(TINY_TOML, ["synthesis.deepinversion.iterations=7", "student.epochs=2",
                                     "data.dataset=synthetic-tiny", "teachers.augment=false",
                                     "synthesis.deepinversion.lr=0.5"])
    p = cfg.synthesis.params
    assert (p.iterations, cfg.student.epochs, cfg.teachers.augment, p.lr) == (7, 2, False, 0.5)
    for bad, message in (("synthesis.deepinversion.iterations=many",
                          r"DeepInversionParams.iterations must be int, got 'many'"),
                         ("synthesis.iteration=7", r"unknown SynthesisConfig field\(s\) \['iteration'\]; known"),
                         ("synthesis.fast.stepz=7", r"unknown FastParams field\(s\) \['stepz'\]; known"),
                         ("synthesis.fast=7", r"synthesis.fast must be a table"),
                         ("synthesis.method.x=7", r"SynthesisConfig.method must be str"),
                         ("synth.iterations=7", r"unknown table\(s\) \['synth'\]; known: data, partition"),
                         ("iterations=7", "expected TABLE.FIELD=VALUE")):
        with pytest.raises(ConfigError, match=message):
            RunConfig.from_toml(TINY_TOML, [bad])
    (tmp_path / "f.toml").write_text('[federate]\nalgorithm = "fedprox"\n')
    fed = FederatedRunConfig.from_toml(tmp_path / "f.toml", ["fedprox.mu=0.25", "federate.rounds=3"])
    assert fed.params.mu == 0.25 and fed.federate.rounds == 3
    res = CliRunner().invoke(cli, ["run", str(TINY_TOML), "--out", str(tmp_path / "run"), "--set", "student.epochs=0"])
    assert res.exit_code == 2 and "[student] epochs must be in [1, 1e9], got 0" in res.output
    assert not (tmp_path / "run" / "config.json").exists()


def numeric_fields():
    """(config class, field, its declared range) of every numeric field of every config of both modes."""
    import dataclasses
    import typing

    from fedinv.federated.config import FederatedRunConfig, GeneratorConfig
    from fedinv.federated.registry import ALGORITHMS, SERVER_STEPS
    from fedinv.oneshot.synthesis.registry import METHODS

    classes = [*(c for c in typing.get_type_hints(RunConfig).values()), FederatedRunConfig().federate.__class__,
               GeneratorConfig, *(m.Params for m in METHODS.values()), *(a.Params for a in ALGORITHMS.values()),
               *(s.Params for s in SERVER_STEPS.values())]
    out = []
    for cls in dict.fromkeys(classes):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            kind = [t for t in typing.get_args(hints[f.name]) if t is not type(None)] or [hints[f.name]]
            if kind[0] in (int, float):
                out.append((cls, f))
    return out


def test_every_numeric_field_declares_its_range_and_refuses_values_outside_it():
    """Numbers without bounds reached torch and crashed there or went silently wrong (negative
    learning rates, momentum 5, NaN loss weights): every numeric field has a range, checked however
    the config is made."""
    import math

    fields = numeric_fields()
    assert len(fields) > 60
    missing = [f"{cls.__name__}.{f.name}" for cls, f in fields if f.metadata.get("valid") is None]
    assert not missing, f"numeric fields without a declared range: {missing}"
    for cls, f in fields:
        valid = f.metadata["valid"]
        bad = [math.nan, math.inf, -math.inf] if f.type in ("float", "float | None") else []
        bad += [valid.low - 1] if valid.low is not None else []
        bad += [valid.low] if valid.low is not None and valid.low_open else []
        bad += [valid.high + 1] if valid.high is not None else []
        for value in bad:
            expected = rf"^{f.name} must be (a finite number )?{re.escape(str(valid))}, got {re.escape(repr(value))}$"
            with pytest.raises(ConfigError, match=expected):
                cls(**{f.name: value})


@pytest.mark.parametrize("args,message", [
    (["train-teachers", "--partition", "p.json", "--momentum", "5"], "--momentum must be in [0, 1), got 5.0"),
    (["train-student", "--store", "s.h5", "--kd-weight", "-1"], "--kd-weight must be >= 0, got -1.0"),
    (["synthesize", "--teachers", "t", "--a-bn", "nan"], "--a-bn must be a finite number >= 0, got nan"),
    (["synthesize", "--teachers", "t", "--method", "fast", "--lr-g", "0"], "--lr-g must be in (0, 10], got 0.0"),
    (["synthesize", "--teachers", "t", "--num-images", "1000000000000"], "--num-images must be in [1, 1e9]"),
])
def test_out_of_range_options_name_the_option_and_write_nothing(tmp_path, args, message):
    res = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "out")])
    assert res.exit_code == 2 and f"error: {message}" in res.output, res.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command,toml,message", [
    ("run", "[teachers]\nmomentum = 5\n", "[teachers] momentum must be in [0, 1), got 5"),
    ("run", "[synthesis]\nnum_images = 100000000000000000000\n", "[synthesis] num_images must be in [1, 1e9]"),
    ("run", "[synthesis.fast]\nlr_g = -1.0\n", "[synthesis] lr_g must be in (0, 10], got -1.0"),
    ("federate", "[federate]\nserver_lr = inf\n", "[federate] server_lr must be a finite number in (0, 10], got inf"),
    ("federate", '[federate]\nserver = "ftg"\n[ftg]\nlambda_md = nan\n',
     "[ftg] lambda_md must be a finite number >= 0, got nan"),
    ("federate", '[federate]\nalgorithm = "fedprox"\n[fedprox]\nmu = -1.0\n', "[fedprox] mu must be >= 0, got -1.0"),
    ("federate", "[generator]\nlr_decay = 0\n", "[generator] lr_decay must be in (0, 1], got 0"),
])
def test_out_of_range_toml_fields_name_their_table(tmp_path, command, toml, message):
    (tmp_path / "c.toml").write_text(toml)
    res = CliRunner().invoke(cli, [command, str(tmp_path / "c.toml"), "--out", str(tmp_path / "run")])
    assert res.exit_code == 2 and f"error: {message}" in res.output, res.output
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("command,text,message", [
    ("run", b'[teachers]\nmodel = "\xff\xfe"\n', "not UTF-8 text (byte 20); TOML files are UTF-8"),
    ("run", b"teachers = 3\n", "teachers must be a table ([teachers]), got 3"),
    ("federate", b"federate = 3\n", "federate must be a table ([federate]), got 3"),
    ("federate", b"fedprox = 3\n", "fedprox must be a table ([fedprox]), got 3"),
])
def test_a_toml_that_is_not_utf8_or_holds_a_scalar_for_a_table_is_named(tmp_path, command, text, message):
    (tmp_path / "c.toml").write_bytes(text)
    res = CliRunner().invoke(cli, [command, str(tmp_path / "c.toml"), "--out", str(tmp_path / "run")])
    assert res.exit_code == 2 and message in res.output and "Traceback" not in res.output, res.output
    assert not (tmp_path / "run").exists()
