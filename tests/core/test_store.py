"""Tests of fedinv.store."""

import shutil

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from fedinv.cli.main import cli
from fedinv.errors import ConfigError, RunStateError
from fedinv.oneshot.student.config import StudentConfig
from fedinv.oneshot.student.train import train_student
from fedinv.oneshot.synthesis.synthesize import synthesize
from fedinv.store import StoreWriter, SyntheticDataset, iterate_store, read_meta, read_rows
from tests.helpers import INFO, random_teachers, real_store, small_cfg, write_teachers


def damage(path, how):
    with h5py.File(path, "r+") as f:
        if how == "n_valid past the rows":
            f["n_valid"][()] = 500
        elif how == "labels cut short":
            f["labels"].resize(50, axis=0)
        elif how == "no soft labels":
            del f["soft_labels"]
        elif how == "label out of range":
            f["labels"][3] = 99
        elif how == "images of another size":
            del f["images"]
            f.create_dataset("images", data=np.zeros((100, 3, 8, 8), np.uint8))
        elif how == "negative n_valid":
            f["n_valid"][()] = -1


@pytest.mark.parametrize("how,message", [
    ("n_valid past the rows", "n_valid = 500"), ("labels cut short", r"\['labels'\] hold fewer rows"),
    ("no soft labels", r"dataset\(s\) \['soft_labels'\] missing"), ("label out of range", "labels outside 0..9"),
    ("images of another size", r"images has rows of shape \(3, 8, 8\)"), ("negative n_valid", "is negative")])
def test_a_damaged_store_is_refused_when_opened(tmp_path, how, message):
    path = tmp_path / "s.h5"
    real_store(path, n=100)
    meta = read_meta(path)
    damage(path, how)
    with pytest.raises(ConfigError, match=message):
        read_meta(path)
    with pytest.raises(ConfigError, match=message):  # --resume does not grow it first
        StoreWriter(path, {k: meta[k] for k in ("num_classes", "image_shape", "mean", "std", "seed", "config",
                                                 "teachers", "dataset")}, resume=True)
    res = CliRunner().invoke(cli, ["train-student", "--store", str(path), "--out", str(tmp_path / "st"), "--no-test",
                                   "--device", "cpu", "--no-progress"])
    assert res.exit_code == 2 and res.output.startswith("error: ") and "is damaged" in res.output
    assert not (tmp_path / "st" / "student.pt").exists()


def test_an_empty_store_is_a_clear_error(tmp_path):
    path = tmp_path / "s.h5"
    real_store(path, n=0)
    with pytest.raises(ConfigError, match="holds no images yet"):
        train_student(path, tmp_path / "st", StudentConfig(model="lenet5", device="cpu"), progress=False)
    res = CliRunner().invoke(cli, ["view", str(path), "--out", str(tmp_path / "g.png")])
    assert res.exit_code == 2 and "holds no images yet" in res.output and not (tmp_path / "g.png").exists()


def test_resume_onto_a_file_that_is_no_store_and_an_unwritable_output(tmp_path):
    models, counts = random_teachers(2)
    from tests.helpers import write_teachers
    write_teachers(tmp_path / "t", models, counts)
    (tmp_path / "notes.h5").write_text("not HDF5")
    base = ["synthesize", "--teachers", str(tmp_path / "t"), "--num-images", "4", "--batch-size", "4",
            "--iterations", "1", "--device", "cpu", "--no-progress"]
    res = CliRunner().invoke(cli, [*base, "--out", str(tmp_path / "notes.h5"), "--resume"])
    assert res.exit_code == 2 and "is not an HDF5 store" in res.output
    (tmp_path / "file").write_text("a file where a folder should be")
    res = CliRunner().invoke(cli, [*base, "--out", str(tmp_path / "file" / "s.h5")])
    assert res.exit_code == 2 and res.output.startswith("error: cannot read or write"), res.output


def test_a_second_writer_on_a_store_is_told_so(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "s.h5"
    real_store(path, n=10)
    meta = read_meta(path)
    holder = subprocess.Popen([sys.executable, "-c", f"import h5py, time\nf = h5py.File({str(path)!r}, 'r+')\n"
                               "print('open', flush=True)\ntime.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(RunStateError, match="being written by another process"):
            StoreWriter(path, {k: meta[k] for k in ("num_classes", "image_shape", "mean", "std", "seed", "config",
                                                     "teachers", "dataset")}, resume=True)
        # a reader (`fedinv view`, a student) is told the same, and how to look anyway (was: "[Errno 11]")
        res = CliRunner().invoke(cli, ["view", str(path), "--out", str(tmp_path / "g.png")])
        assert res.exit_code == 2 and "being written by another process" in res.output and "cp " in res.output
        assert not (tmp_path / "g.png").exists()
    finally:
        holder.kill()
        holder.wait()


def test_a_store_reads_the_same_in_plain_h5py_and_h5dump(tmp_path):
    """/images used h5py's own LZF filter, which h5dump (HDF5 1.10) printed as empty data."""
    import subprocess

    real_store(tmp_path / "s.h5", n=200)
    with h5py.File(tmp_path / "s.h5", "r") as f:
        images = f["images"]
        assert images.compression == "gzip" and images.shuffle  # built into every HDF5 library
        ours = images[:3]
    if shutil.which("h5dump") is None:
        pytest.skip("h5dump not installed (apt-get install hdf5-tools)")
    out = subprocess.run(["h5dump", "-d", "/images", "-s", "0,0,0,0", "-c", "3,3,16,16", "-y", "-w", "0",
                          str(tmp_path / "s.h5")], capture_output=True, text=True, check=True).stdout
    data = out.split("DATA {", 1)[1].split("}", 1)[0]
    values = [int(v) for v in data.replace(",", " ").split()]
    assert values == ours.reshape(-1).tolist()


def test_a_full_disk_stops_synthesis_with_the_store_intact(tmp_path, monkeypatch):
    """HDF5 that ran out of space mid-write crashed the process (rc 139)."""
    import collections

    import fedinv.store as store_module
    from tests.helpers import write_teachers

    write_teachers(tmp_path / "t", *random_teachers(2))
    args = ["synthesize", "--teachers", str(tmp_path / "t"), "--out", str(tmp_path / "s.h5"), "--num-images", "8",
            "--batch-size", "4", "--iterations", "1", "--device", "cpu", "--no-progress"]
    usage = collections.namedtuple("usage", "total used free")
    calls = []

    def nearly_full(path):  # room for the first batch only
        calls.append(path)
        return usage(1 << 30, 1 << 30, (1 << 21) if len(calls) == 1 else (1 << 19))

    monkeypatch.setattr(store_module.shutil, "disk_usage", nearly_full)
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 2 and "is full" in res.output and "rerun the same command" in res.output, res.output
    assert read_meta(tmp_path / "s.h5")["n_valid"] == 4
    monkeypatch.undo()
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert read_meta(tmp_path / "s.h5")["n_valid"] == 8


def test_iterate_store_visits_every_row_once_in_bounded_blocks(tmp_path):
    data = real_store(tmp_path / "s.h5", n=1000)
    seen = []
    for x, y, s in iterate_store(tmp_path / "s.h5", 64, torch.Generator().manual_seed(0), buffer_batches=3):
        assert len(y) <= 64 and x.shape[1:] == (3, 16, 16)
        seen.append(y)
    assert sum(len(y) for y in seen) == 1000
    assert sorted(torch.cat(seen).tolist()) == sorted(data.labels.tolist())
    first = next(iterate_store(tmp_path / "s.h5", 64, torch.Generator().manual_seed(1)))[1]
    assert not torch.equal(first, seen[0]), "shuffled per generator"


def test_reader_with_two_dataloader_workers(tmp_path):
    models, counts = random_teachers(2)
    write_teachers(tmp_path / "t", models, counts)
    synthesize(tmp_path / "t", tmp_path / "s.h5", small_cfg(num_images=30, batch_size=10), progress=False)
    ds = SyntheticDataset(tmp_path / "s.h5")
    loader = torch.utils.data.DataLoader(ds, batch_size=7, num_workers=2, shuffle=False)
    xs, ys, softs = zip(*loader)
    x, y = torch.cat(xs), torch.cat(ys)
    images, labels, soft = read_rows(tmp_path / "s.h5")
    assert torch.equal(y, labels) and torch.equal(torch.cat(softs), soft)
    mean, std = torch.tensor(INFO.mean).view(1, -1, 1, 1), torch.tensor(INFO.std).view(1, -1, 1, 1)
    torch.testing.assert_close(x, (images.float() / 255 - mean) / std)


def test_soft_labels_that_are_not_finite_are_refused_naming_the_row(tmp_path):
    """NaN soft labels used to train and audit silently."""
    path = tmp_path / "s.h5"
    real_store(path, n=100)
    with h5py.File(path, "r+") as f:
        f["soft_labels"][13] = np.nan
    with pytest.raises(ConfigError, match="soft labels of row 13 are not finite"):
        read_rows(path)
    with pytest.raises(ConfigError, match="soft labels of row 13 are not finite"):
        list(iterate_store(path, 4, torch.Generator().manual_seed(0)))
    with pytest.raises(ConfigError, match="soft labels of row 13 are not finite"):
        read_rows(path, np.array([2, 13]))
    assert len(read_rows(path, np.array([2, 5]))[1]) == 2
