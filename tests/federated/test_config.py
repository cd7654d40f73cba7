"""Tests of fedinv.federated.config."""

import pytest

from fedinv.errors import ConfigError
from fedinv.federated.config import FederateConfig, FederatedRunConfig
from fedinv.train.resume import changes


def test_config_errors_name_the_options():
    with pytest.raises(ConfigError, match="known: fedavg, feddistill, feddistill-query, feddyn, fedprox, moon, scaffold"):
        FederateConfig(algorithm="fedsgd")
    with pytest.raises(ConfigError, match="known: feddf, fedgen, ftg, none"):
        FederateConfig(server="ftgg")
    with pytest.raises(ConfigError, match="participation"):
        FederateConfig(participation=0)


def test_algorithm_tables_and_the_constants_of_older_configs(tmp_path):
    base = '[federate]\nalgorithm = "{}"\n'
    path = tmp_path / "a.toml"
    path.write_text(base.format("fedprox") + "[fedprox]\nmu = 0.5\n[moon]\nmu = 3.0\n")
    cfg = FederatedRunConfig.from_toml(path)
    assert cfg.params.mu == 0.5  # the [moon] table is there but not for this run
    assert FederatedRunConfig.from_dict(cfg.to_dict()) == cfg  # what config.json and checkpoints hold
    path.write_text(base.format("moon") + "mu = 2.0\nmoon_temperature = 0.1\n")
    cfg = FederatedRunConfig.from_toml(path)  # a config of fedinv before per-algorithm tables
    assert (cfg.params.mu, cfg.params.temperature) == (2.0, 0.1)
    path.write_text(base.format("moon") + "mu = 2.0\nfeddyn_alpha = 0.3\n")
    with pytest.raises(ConfigError, match=r"federate.feddyn_alpha does not apply to algorithm moon; it is a "
                                          r"setting of \[feddyn\]"):
        FederatedRunConfig.from_toml(path)  # it would do nothing: said, not ignored
    path.write_text(base.format("feddyn") + "[feddyn]\nalpha = 0.0\n")
    with pytest.raises(ConfigError, match="alpha must be > 0"):
        FederatedRunConfig.from_toml(path)
    path.write_text(base.format("fedavg") + "[fedprox]\nmuu = 1\n")
    with pytest.raises(ConfigError, match=r"unknown ProxParams field\(s\) \['muu'\]; known: mu"):
        FederatedRunConfig.from_toml(path)
    path.write_text(base.format("fedavg") + "[fedproxx]\nmu = 1\n")
    with pytest.raises(ConfigError, match=r"unknown table\(s\) \['fedproxx'\]"):
        FederatedRunConfig.from_toml(path)
    path.write_text(base.format("feddistill-query") + 'server = "ftg"\n')
    with pytest.raises(ConfigError, match="server must be none"):
        FederatedRunConfig.from_toml(path)


def test_server_step_tables_and_the_generator_settings_of_older_configs(tmp_path):
    path = tmp_path / "a.toml"
    path.write_text('[federate]\nserver = "ftg"\n[ftg]\nlambda_md = 0.5\n[feddf]\nmodel_steps = 3\n[fedgen]\nweight = 2.0\n')
    cfg = FederatedRunConfig.from_toml(path)
    assert cfg.server_params.lambda_md == 0.5 and cfg.server_params.model_steps == 5  # [feddf] is not this run's
    assert FederatedRunConfig.from_dict(cfg.to_dict()) == cfg
    assert FederatedRunConfig.from_toml(path, ['federate.server="fedgen"']).server_params.weight == 2.0
    assert FederatedRunConfig.from_toml(path, ['federate.server="none"']).server_params is None
    path.write_text('[federate]\nserver = "ftg"\n[generator]\nlambda_md = 0.25\nbn_stats = "eval"\n')
    cfg = FederatedRunConfig.from_toml(path)  # a config of fedinv before per-step tables
    assert (cfg.server_params.lambda_md, cfg.server_params.bn_stats) == (0.25, "eval")
    for server, message in (("feddf", r"generator.lambda_md does not apply to server step feddf; it is a setting "
                                      r"of \[ftg\]"),
                            ("none", r"generator.bn_stats does not apply to server none; it is a setting of "
                                     r"\[ftg\] and \[feddf\]")):
        with pytest.raises(ConfigError, match=message):
            FederatedRunConfig.from_toml(path, [f'federate.server="{server}"'])
    path.write_text('[ftg]\nlambda_mdd = 1\n')
    with pytest.raises(ConfigError, match=r"unknown FTGParams field\(s\) \['lambda_mdd'\]; known: bn_stats"):
        FederatedRunConfig.from_toml(path)
    # a run saved by fedinv 0.1 kept every step's settings in [generator]: they go where they belong,
    # and those of other steps did nothing then and are dropped
    saved = cfg.to_dict()
    del saved["ftg"]
    saved["generator"].update(model_steps=5, model_lr=0.01, temperature=1.0, per_model_steps=False, lambda_md=0.25,
                              ensemble="label", bn_stats="eval", generator_ema=0.0, save_every=0, fedgen_weight=1.0)
    assert FederatedRunConfig.from_dict(saved) == cfg and changes(saved, cfg) == []
