"""Tests of fedinv.oneshot.compat."""

import json
import shutil
from pathlib import Path

import h5py
import pytest
import torch

from fedinv.config import to_dict
from fedinv.errors import RunStateError
from fedinv.oneshot.pipeline import RunConfig
from fedinv.oneshot.synthesis.config import SynthesisConfig
from fedinv.oneshot.synthesis.store import state_path
from fedinv.oneshot.synthesis.synthesize import synthesize
from fedinv.store import read_meta, read_rows
from fedinv.train.resume import changes
from tests.helpers import REPO, TINY_TOML, gen_cfg, random_teachers, small_cfg, write_teachers


V01 = REPO / "tests" / "data" / "v0.1"


COMMON = dict(batch_size=12, teachers_per_step=2, device="cpu", flip=False)  # synthetic-tiny cannot flip


def copy_of(tmp_path: Path, store: str) -> Path:
    shutil.copytree(V01 / "teachers", tmp_path / "teachers", dirs_exist_ok=True)
    shutil.copyfile(V01 / store, tmp_path / store)
    if state_path(V01 / store).is_file():
        shutil.copyfile(state_path(V01 / store), state_path(tmp_path / store))
    return tmp_path / store


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


def test_the_fixtures_record_the_flat_fields_of_then():
    for store, method in (("deepinversion.h5", "deepinversion"), ("fast.h5", "fast")):
        config = read_meta(V01 / store)["config"]
        assert config["method"] == method and "iterations" in config and "steps" in config and method not in config
    assert "iterations" in json.loads((V01 / "run-config.json").read_text())["synthesis"]


def test_a_deepinversion_store_of_0_1_continues_as_a_store_of_today(tmp_path):
    torch.set_num_threads(1)
    old = copy_of(tmp_path, "deepinversion.h5")
    cfg = SynthesisConfig.of(iterations=3, num_images=48, **COMMON)
    stats = synthesize(tmp_path / "teachers", old, cfg, resume=True, progress=False)
    assert stats["batches"] == 2 and stats["n_valid"] == 48
    assert read_meta(old)["config"]["iterations"] == 3, "the store keeps the form it was made with"
    fresh = synthesize(tmp_path / "teachers", tmp_path / "fresh.h5", cfg, progress=False)
    assert fresh["n_valid"] == 48
    for a, b in zip(read_rows(old), read_rows(tmp_path / "fresh.h5")):
        assert torch.equal(a[24:], b[24:]), "batches 2 and 3 are drawn from (seed, b) alone, in either form"
    other = SynthesisConfig.of(iterations=4, num_images=48, **COMMON)
    assert changes(read_meta(old)["config"], other) == ["deepinversion.iterations"]


def test_a_fast_store_of_0_1_continues_from_its_generator_state(tmp_path):
    """The old store and the same store relabelled with today's form of its config continue alike."""
    torch.set_num_threads(1)
    cfg = SynthesisConfig.of("fast", steps=2, generator_width=16, num_images=48, **COMMON)
    old = copy_of(tmp_path / "old", "fast.h5")
    relabelled = copy_of(tmp_path / "new", "fast.h5")
    with h5py.File(relabelled, "r+") as f:
        f.attrs["config"] = json.dumps(to_dict(SynthesisConfig.from_dict(json.loads(f.attrs["config"]))),
                                       sort_keys=True)
    assert "fast" in read_meta(relabelled)["config"] and "steps" not in read_meta(relabelled)["config"]
    for store in (old, relabelled):
        stats = synthesize(store.parent / "teachers", store, cfg, resume=True, progress=False)
        assert stats["batches"] == 2 and stats["n_valid"] == 48
        assert torch.load(state_path(store), weights_only=True)["rows"] == 48
    for a, b in zip(read_rows(old), read_rows(relabelled)):
        assert torch.equal(a, b)
    wider = SynthesisConfig.of("fast", steps=2, num_images=48, **COMMON)
    assert changes(read_meta(old)["config"], wider) == ["fast.generator_width"]


def test_a_run_folder_of_0_1_is_the_same_run_as_its_config_today():
    saved = json.loads((V01 / "run-config.json").read_text())
    cfg = RunConfig.from_toml(TINY_TOML)
    assert changes(saved, cfg) == []
    assert cfg.synthesis.params.iterations == saved["synthesis"]["iterations"]
    assert changes(saved, RunConfig.from_toml(TINY_TOML, ["synthesis.deepinversion.iterations=21"])) == \
        ["synthesis.deepinversion.iterations"]


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
