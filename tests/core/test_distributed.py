"""Tests of fedinv.distributed."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from fedinv.distributed import World, shard_path, world_from_env
from fedinv.store import merge_shards, read_meta
from tests.helpers import REPO, random_teachers, real_store, write_teachers


TORCHRUN = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")


SYNTH = ["synthesize", "--num-images", "60", "--batch-size", "12", "--iterations", "3", "--teachers-per-step", "2",
         "--device", "cpu", "--no-progress"]


def env_one_thread():
    # torchrun gives each rank one thread; the single-process reference uses one too, so the
    # floating-point reductions run in the same order and the images agree bit for bit.
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def store_arrays(path):
    with h5py.File(path, "r") as f:
        n = int(f["n_valid"][()])
        return {k: f[k][:n] for k in ("images", "labels", "soft_labels", "source")}


def test_world_from_env():
    assert world_from_env({}) == World(0, 1, 0) and not World().is_distributed
    w = world_from_env({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"})
    assert w.is_distributed and shard_path(Path("a/s.h5"), w) == Path("a/s.rank-1-of-2.h5")


@pytest.mark.skipif(TORCHRUN is None, reason="torchrun not found")
def test_torchrun_synthesis_equals_one_process(tmp_path):
    models, counts = random_teachers()
    write_teachers(tmp_path / "teachers", models, counts)
    base = [sys.executable, "-m", "fedinv", "-q"]
    subprocess.run(base + SYNTH + ["--teachers", str(tmp_path / "teachers"), "--out", str(tmp_path / "one.h5")],
                   env=env_one_thread(), check=True, capture_output=True)
    res = subprocess.run([TORCHRUN, "--nproc-per-node", "2", "--standalone", "-m", "fedinv", "-q"] + SYNTH +
                         ["--teachers", str(tmp_path / "teachers"), "--out", str(tmp_path / "two.h5")],
                         env=env_one_thread(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert not list(tmp_path.glob("two.rank-*")), "the shards are merged and removed"
    one, two = store_arrays(tmp_path / "one.h5"), store_arrays(tmp_path / "two.h5")
    assert len(two["labels"]) == 60
    printed = json.loads(res.stdout)  # rank 0 alone prints, and reports the whole job
    assert printed["images"] == printed["n_valid"] == 60 and printed["world_size"] == 2
    for k in one:
        assert np.array_equal(one[k], two[k]), k
    assert read_meta(tmp_path / "two.h5")["config"] == read_meta(tmp_path / "one.h5")["config"]


def test_merge_shards_interleaves_batches(tmp_path):
    data = real_store(tmp_path / "full.h5", n=500)  # 5 batches of 100
    del data
    full = store_arrays(tmp_path / "full.h5")
    from fedinv.store import StoreWriter, writer_meta
    meta = writer_meta(read_meta(tmp_path / "full.h5"))
    shards = [tmp_path / f"s{r}.h5" for r in range(2)]
    for r, path in enumerate(shards):
        with StoreWriter(path, meta, chunk_rows=100) as w:
            for b in range(r, 5, 2):
                rows = slice(b * 100, (b + 1) * 100)
                w.append(*(torch.from_numpy(full[k][rows]) for k in ("images", "labels", "soft_labels", "source")))
    assert merge_shards(shards, tmp_path / "merged.h5", 100) == 500
    merged = store_arrays(tmp_path / "merged.h5")
    assert all(np.array_equal(merged[k], full[k]) for k in full)


@pytest.mark.skipif(TORCHRUN is None, reason="torchrun not found")
def test_torchrun_student_trains_with_ddp(tmp_path):
    real_store(tmp_path / "s.h5", n=400)
    res = subprocess.run([TORCHRUN, "--nproc-per-node", "2", "--standalone", "-m", "fedinv", "-q", "train-student",
                          "--store", str(tmp_path / "s.h5"), "--out", str(tmp_path / "st"), "--model", "lenet5",
                          "--epochs", "2", "--batch-size", "32", "--ce-weight", "1", "--device", "cpu",
                          "--no-progress"], env=env_one_thread(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    printed = json.loads(res.stdout)  # one JSON object: rank 0's (rank 1 used to print one of nulls)
    report = json.loads((tmp_path / "st" / "report.json").read_text())
    assert printed["store_images"] == report["store_images"] == 400
    assert len(report["history"]) == 2 and report["world_size"] == 2
    # 400 rows / 32 = 13 batches: each of the 2 ranks takes 6 (an effective batch of 64)
    assert report["history"][0]["steps_per_rank"] == 6
    assert (tmp_path / "st" / "student.pt").is_file()
