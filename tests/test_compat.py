"""What fedinv 0.1 left on disk (tests/data/v0.1, made by tests/data/make_v0_1.py before the one-shot
package and the per-method synthesis settings) opens and continues: teachers, stores of the
per-batch and the generator methods with their flat [synthesis] fields, and a run folder's config."""

import json
import shutil
from pathlib import Path

import h5py
import torch
from test_pipeline import TINY

from fedinv.config import to_dict
from fedinv.oneshot.pipeline import RunConfig
from fedinv.oneshot.synthesis.config import SynthesisConfig
from fedinv.oneshot.synthesis.store import state_path
from fedinv.oneshot.synthesis.synthesize import synthesize
from fedinv.store import read_meta, read_rows
from fedinv.train.resume import changes

V01 = Path(__file__).parent / "data" / "v0.1"
COMMON = dict(batch_size=12, teachers_per_step=2, device="cpu", flip=False)  # synthetic-tiny cannot flip


def copy_of(tmp_path: Path, store: str) -> Path:
    shutil.copytree(V01 / "teachers", tmp_path / "teachers", dirs_exist_ok=True)
    shutil.copyfile(V01 / store, tmp_path / store)
    if state_path(V01 / store).is_file():
        shutil.copyfile(state_path(V01 / store), state_path(tmp_path / store))
    return tmp_path / store


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
    cfg = RunConfig.from_toml(TINY)
    assert changes(saved, cfg) == []
    assert cfg.synthesis.params.iterations == saved["synthesis"]["iterations"]
    assert changes(saved, RunConfig.from_toml(TINY, ["synthesis.deepinversion.iterations=21"])) == \
        ["synthesis.deepinversion.iterations"]
