"""The HDF5 synthetic store: an appendable writer that resumes, and a lazy torch Dataset.

Layout (schema 1):
    /images       uint8   [N, C, H, W]  chunked by batch, gzip level 1 + shuffle
    /labels       int64   [N]
    /soft_labels  float16 [N, K]  normalized log-probabilities of the class-level teacher ensemble
    /source       int32   [N, 2]  (batch index, bitmask of the teachers used; -1 past 31 teachers)
    /n_valid      int64   scalar  rows written and flushed; readers trust it, resume truncates to it
    root attrs:   schema_version, fedinv_version, num_classes, image_shape, mean, std, seed,
                  config (JSON), teachers (JSON: file name -> sha256), dataset (JSON: name, class_names)

The file uses HDF5's default (earliest) format, not libver="latest": the newer superblock marks a
file "open for writing" until it is closed, and a writer that is killed leaves the mark, after
which HDF5 refuses to open the file again (only the h5clear tool removes it). A killed synthesis
must resume from the file as it is.

Filters: gzip (deflate) is built into every HDF5 library, so h5dump, HDFView or MATLAB read a
store as h5py does (stores of older fedinv versions used h5py's own LZF, which they cannot
decode; h5py still reads those). experiments/store-compression: gzip level 1 writes about half as
fast as LZF (~50 MB/s, milliseconds per batch beside seconds of synthesis) and stores 8% smaller.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any, Collection

import h5py
import numpy as np
import torch

from . import __version__
from .data.datasets import DatasetInfo
from .errors import ConfigError, RunStateError
from .runtime import atomic_path

SCHEMA_VERSION = 1
ROWS = ("images", "labels", "soft_labels", "source")  # the datasets with a row per image
FILTER = {"compression": "gzip", "compression_opts": 1, "shuffle": True}  # every HDF5 reader has it
META_KEYS = ("num_classes", "image_shape", "mean", "std", "seed", "config", "teachers", "dataset")


def store_meta(info: DatasetInfo, *, seed: int, config: dict[str, Any], teachers: dict[str, str]) -> dict[str, Any]:
    """What a store records besides its rows (a StoreWriter is opened with it): the dataset facts
    of the images, the seed and config that made them (run-time fields left out, so that a store
    resumes on another device), and the sha256 of each teacher file (empty when none)."""
    return {"num_classes": info.num_classes, "image_shape": list(info.image_shape), "mean": list(info.mean),
            "std": list(info.std), "seed": seed, "config": config, "teachers": teachers,
            "dataset": {"name": info.name, "class_names": list(info.class_names), "hflip": info.hflip}}


def meta_info(meta: dict[str, Any]) -> DatasetInfo:
    """The dataset facts a store records (normalization, shape, class names), from `read_meta`."""
    c, h, _ = meta["image_shape"]
    d = meta["dataset"]
    return DatasetInfo(d["name"], meta["num_classes"], c, h, tuple(meta["mean"]), tuple(meta["std"]),
                       tuple(d["class_names"]), d.get("hflip", True))


class StoreWriter:
    """Append batches to a store, flushing after each so a killed run loses at most one batch.

    `resume=True` reopens an existing store made with the same metadata (config, teachers) and
    truncates it to its `n_valid` rows; without it an existing file is an error. `renew`: metadata
    keys that may differ from the store's and are rewritten on resume (a store grown to more images
    records its new config; the caller has checked what may change).
    """

    def __init__(self, path: str | Path, meta: dict[str, Any], *, resume: bool = False, chunk_rows: int = 256,
                 renew: Collection[str] = ()):
        self.path = Path(path)
        num_classes, image_shape = int(meta["num_classes"]), tuple(meta["image_shape"])
        attrs = _encode(meta)
        if self.path.exists():
            if not resume:
                raise RunStateError(f"{self.path} exists (resume=False asks for a fresh store); choose another --out")
            self.file = _open_for_append(self.path)
            mismatch = [k for k, v in attrs.items()
                        if k not in ("fedinv_version", *renew) and _attr(self.file, k) != _comparable(v)]
            if mismatch:
                self.file.close()
                raise RunStateError(f"{self.path} was made with other settings ({', '.join(mismatch)}); "
                                  f"cannot resume it with these; choose another --out")
            try:
                n = check_rows(self.file, meta, self.path)
            except ConfigError:
                self.file.close()
                raise
            self._truncate(n)
            for k in renew:
                self.file.attrs[k] = attrs[k]
            self.file.flush()
            self.created = False
            return
        self.created = True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = h5py.File(self.path, "w")
        for k, v in attrs.items():
            self.file.attrs[k] = v
        rows = max(1, chunk_rows)
        self.file.create_dataset("images", (0, *image_shape), np.uint8, maxshape=(None, *image_shape),
                                 chunks=(rows, *image_shape), **FILTER)
        self.file.create_dataset("labels", (0,), np.int64, maxshape=(None,), chunks=(rows,))
        self.file.create_dataset("soft_labels", (0, num_classes), np.float16, maxshape=(None, num_classes),
                                 chunks=(rows, num_classes), **FILTER)
        self.file.create_dataset("source", (0, 2), np.int32, maxshape=(None, 2), chunks=(rows, 2))
        self.file.create_dataset("n_valid", data=np.int64(0))
        self.file.flush()

    @property
    def n_valid(self) -> int:
        return int(self.file["n_valid"][()])

    def rewind(self, n: int) -> None:
        """Drop the rows after the first n (a run whose carried state was saved at n rows goes on from
        there and rewrites them exactly)."""
        if not 0 <= n <= self.n_valid:
            raise RunStateError(f"{self.path} holds {self.n_valid} rows; cannot rewind it to {n}")
        self.file["n_valid"][()] = n
        self.file.flush()
        self._truncate(n)

    def record_run(self, facts: dict[str, Any]) -> None:
        """Record how this session computes the rows (`runtime.ran_on`: device, precision) as the root
        attribute `ran_on`; not part of the metadata a resume compares (a store may be continued
        on another machine: it then records the latest session's)."""
        self.file.attrs["ran_on"] = json.dumps(facts, sort_keys=True)
        self.file.flush()

    def record_claims(self, check: dict[str, Any]) -> None:
        """Record the teachers' label claims as checked (`synthesis.claims.ClaimsCheck.record`) as the
        root attribute `claims`: a student weighing the same teachers reads what the ensemble used."""
        self.file.attrs["claims"] = json.dumps(check, sort_keys=True)
        self.file.flush()

    def _check_space(self, raw_bytes: int) -> None:
        """Refuse a batch the disk cannot hold: HDF5 that runs out of space mid-write leaves a cascade
        of errors and can crash the process. Needs the batch uncompressed plus 1 MiB of slack."""
        free = shutil.disk_usage(self.path.parent).free
        if free < raw_bytes + (1 << 20):
            raise RunStateError(f"the disk holding {self.path} is full ({free / 2 ** 20:.1f} MiB free, a batch needs "
                                f"about {(raw_bytes + (1 << 20)) / 2 ** 20:.1f}); the store holds {self.n_valid} "
                                f"images intact: free space and rerun the same command to continue")

    def _truncate(self, n: int) -> None:
        for name in ("images", "labels", "soft_labels", "source"):
            self.file[name].resize(n, axis=0)
        self.file.flush()

    def append(self, images: torch.Tensor, labels: torch.Tensor, soft_labels: torch.Tensor,
               source: torch.Tensor) -> int:
        """Write one batch (uint8 [B, C, H, W], [B], [B, K], [B, 2]); returns the new n_valid."""
        n, b = self.n_valid, len(labels)
        self._check_space(sum(t.numel() * t.element_size() for t in (images, labels, soft_labels, source)))
        for name, value in (("images", images), ("labels", labels), ("soft_labels", soft_labels), ("source", source)):
            ds = self.file[name]
            ds.resize(n + b, axis=0)
            ds[n:n + b] = value.detach().cpu().numpy().astype(ds.dtype)
        self.file.flush()  # the rows are on disk before n_valid says so
        self.file["n_valid"][()] = n + b
        self.file.flush()
        return n + b

    def close(self) -> None:
        if self.file.id.valid:
            self.file.close()

    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _open_for_append(path: Path) -> h5py.File:
    try:
        return h5py.File(path, "r+")
    except BlockingIOError as e:
        raise RunStateError(f"{path} is being written by another process; wait for it to finish, or choose "
                            f"another --out") from e
    except OSError as e:
        raise ConfigError(f"{path} is not an HDF5 store fedinv can continue ({e}); choose another --out") from e


def _encode(meta: dict[str, Any]) -> dict[str, Any]:
    """Root attributes: scalars and short arrays as they are, dicts as JSON."""
    out: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "fedinv_version": __version__}
    for k, v in meta.items():
        out[k] = json.dumps(v, sort_keys=True) if isinstance(v, dict) else v
    return out


def _attr(file: h5py.File, key: str) -> Any:
    value = file.attrs.get(key)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    return value


def _comparable(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


def read_meta(path: str | Path) -> dict[str, Any]:
    """The root attributes of a store (JSON fields decoded) and its n_valid."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"synthetic store {path} not found; make one with `fedinv synthesize`")
    try:
        with h5py.File(path, "r") as f:
            meta = {k: _attr(f, k) for k in f.attrs}
            if meta.get("schema_version") != SCHEMA_VERSION:
                raise ConfigError(f"{path}: schema_version {meta.get('schema_version')!r}, this fedinv reads "
                                  f"{SCHEMA_VERSION}")
            for k in ("config", "teachers", "dataset", "ran_on", "claims"):
                if isinstance(meta.get(k), str):
                    meta[k] = json.loads(meta[k])
            meta["n_valid"] = check_rows(f, meta, path)
    except BlockingIOError as e:
        raise RunStateError(f"{path} is being written by another process (a synthesis or an online student); wait "
                            f"for it to finish, or look at a copy: cp {path} /tmp/copy.h5") from e
    except (OSError, KeyError, ValueError, TypeError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"{path} is not a readable fedinv synthetic store: {e}") from e
    return meta


def check_rows(f: h5py.File, meta: dict[str, Any], path: Path) -> int:
    """`n_valid` of an open store, after checking that its datasets hold that many rows of the
    recorded shapes, with labels among the recorded classes."""
    missing = [name for name in (*ROWS, "n_valid") if name not in f]
    if missing:
        raise ConfigError(f"{path} is damaged: dataset(s) {missing} missing")
    n, k, shape = int(f["n_valid"][()]), int(meta["num_classes"]), tuple(meta["image_shape"])
    short = [name for name in ROWS if f[name].shape[0] < n]
    if n < 0 or short:
        raise ConfigError(f"{path} is damaged: n_valid = {n}, but {short or 'n_valid'} "
                          f"{'hold fewer rows' if short else 'is negative'}")
    expected = {"images": shape, "soft_labels": (k,), "source": (2,), "labels": ()}
    wrong = [name for name, rest in expected.items() if tuple(f[name].shape[1:]) != rest]
    if wrong:
        raise ConfigError(f"{path} is damaged: {wrong[0]} has rows of shape {tuple(f[wrong[0]].shape[1:])}, the "
                          f"store records {expected[wrong[0]]}")
    labels = f["labels"][:n]
    if n and (labels.min() < 0 or labels.max() >= k):
        raise ConfigError(f"{path} is damaged: labels outside 0..{k - 1}")
    return n


class SyntheticDataset(torch.utils.data.Dataset):
    """The first `n_valid` images of a store as (x float [C, H, W] normalized, label, soft [K]).

    The HDF5 file is opened lazily in the process that reads (each DataLoader worker opens its
    own handle after the fork), never shared across a fork.
    """

    def __init__(self, path: str | Path, normalize: bool = True):
        self.path = str(path)
        self.meta = read_meta(path)
        self.length = self.meta["n_valid"]
        self.normalize = normalize
        self.mean = torch.tensor(self.meta["mean"], dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(self.meta["std"], dtype=torch.float32).view(-1, 1, 1)
        self._file: h5py.File | None = None
        self._pid: int | None = None

    def _h5(self) -> h5py.File:
        if self._file is None or self._pid != os.getpid():
            self._file, self._pid = h5py.File(self.path, "r"), os.getpid()
        return self._file

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, torch.Tensor]:
        if not 0 <= i < self.length:
            raise IndexError(i)
        f = self._h5()
        x = torch.from_numpy(f["images"][i])
        if self.normalize:
            x = (x.float() / 255 - self.mean) / self.std
        return x, int(f["labels"][i]), checked_soft(f["soft_labels"][i:i + 1], self.path, i)[0]

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_file"], state["_pid"] = None, None  # an open handle never crosses a fork or pickle
        return state


def read_rows(path: str | Path, rows: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(images uint8 [M, C, H, W], labels [M], soft_labels float [M, K]) of `rows` (default: all valid)."""
    n = read_meta(path)["n_valid"]
    with h5py.File(path, "r") as f:
        if rows is None:
            sel: Any = slice(0, n)
        else:
            sel = np.sort(np.asarray(rows, dtype=np.int64))
            if len(sel) and (sel[0] < 0 or sel[-1] >= n):
                raise IndexError(f"rows outside 0..{n - 1}")
        return (torch.from_numpy(f["images"][sel]), torch.from_numpy(f["labels"][sel]),
                checked_soft(f["soft_labels"][sel], path, 0 if rows is None else sel))


def checked_soft(soft: np.ndarray, path: str | Path, rows: int | np.ndarray = 0) -> torch.Tensor:
    """Soft labels read from a store, as float32, after checking that every entry is finite (a NaN
    or inf would train or audit silently on garbage); `rows`: the store row of soft[0], or of each."""
    out = torch.from_numpy(soft.astype(np.float32))
    bad = ~torch.isfinite(out).all(1)
    if bad.any():
        first = int(bad.nonzero()[0])
        row = rows + first if isinstance(rows, int) else int(rows[first])
        raise ConfigError(f"{path} is damaged: the soft labels of row {row} are not finite numbers "
                          f"({int(bad.sum())} such rows here); synthesize the store again")
    return out


def read_labels(path: str | Path) -> torch.Tensor:
    n = read_meta(path)["n_valid"]
    with h5py.File(path, "r") as f:
        return torch.from_numpy(f["labels"][:n])



def writer_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """The part of `read_meta` a StoreWriter is opened with (to append to an existing store)."""
    return {k: meta[k] for k in META_KEYS}


def iterate_store(path: str | Path, batch_size: int, gen: torch.Generator, buffer_batches: int = 16,
                  limit: int | None = None):
    """Yield shuffled (images uint8 [B, C, H, W], labels [B], soft [B, K]) over the first `limit`
    (default n_valid) rows, reading `buffer_batches` random blocks of rows at a time.

    Memory is bounded by the buffer, not by the store: a store of 200k images streams in the
    same footprint as one of 10k. Each row is visited exactly once per call.
    """
    n = read_meta(path)["n_valid"] if limit is None else limit
    blocks = torch.randperm(math.ceil(n / batch_size), generator=gen).tolist()
    with h5py.File(path, "r") as f:
        images, labels, soft = f["images"], f["labels"], f["soft_labels"]
        carry: list[tuple[torch.Tensor, ...]] = []
        for start in range(0, len(blocks), buffer_batches):
            chunk = sorted(blocks[start:start + buffer_batches])
            parts = [(torch.from_numpy(images[b * batch_size:min(n, (b + 1) * batch_size)]),
                      torch.from_numpy(labels[b * batch_size:min(n, (b + 1) * batch_size)]),
                      checked_soft(soft[b * batch_size:min(n, (b + 1) * batch_size)], path, b * batch_size))
                     for b in chunk]
            x, y, s = (torch.cat(t) for t in zip(*(carry + parts)))
            order = torch.randperm(len(y), generator=gen)
            x, y, s = x[order], y[order], s[order]
            full = len(y) - len(y) % batch_size
            for i in range(0, full, batch_size):
                yield x[i:i + batch_size], y[i:i + batch_size], s[i:i + batch_size]
            carry = [(x[full:], y[full:], s[full:])] if full < len(y) else []
        if carry and len(carry[0][1]):
            yield carry[0]


def merge_shards(shards: list[Path], out: str | Path, batch_size: int) -> int:
    """Interleave the stores of a W-rank run (rank r holds batches r, r + W, ...) into one store
    `out` in batch order, as a single process would have written it; returns its row count.
    Written under a temporary name and renamed, so `out` is whole or absent."""
    metas = [read_meta(s) for s in shards]
    if any(writer_meta(m) != writer_meta(metas[0]) for m in metas[1:]):
        raise ConfigError(f"the shards {[str(s) for s in shards]} were made with different settings")
    world, total = len(shards), sum(m["n_valid"] for m in metas)
    files = [h5py.File(s, "r") for s in shards]
    try:
        with atomic_path(out) as tmp:
            tmp.unlink()
            with StoreWriter(tmp, writer_meta(metas[0]), chunk_rows=batch_size) as writer:
                if "ran_on" in metas[0]:
                    writer.record_run(metas[0]["ran_on"])
                if "claims" in metas[0]:
                    writer.record_claims(metas[0]["claims"])
                b = 0
                while writer.n_valid < total:
                    f, start = files[b % world], (b // world) * batch_size
                    stop = min(start + batch_size, metas[b % world]["n_valid"])
                    if start >= stop:
                        raise ConfigError(f"shard {shards[b % world]} is missing batch {b}; run every rank to the end")
                    writer.append(*(torch.from_numpy(f[name][start:stop])
                                    for name in ("images", "labels", "soft_labels", "source")))
                    b += 1
    finally:
        for f in files:
            f.close()
    return total
