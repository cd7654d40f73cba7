"""Tests of fedinv.config."""

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
    assert res.exit_code == 2 and "epochs must be >= 1" in res.output
    assert not (tmp_path / "run" / "config.json").exists()
