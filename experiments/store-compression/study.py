"""What does each HDF5 filter cost the synthetic store: size, write and read speed? LZF ships only with
h5py; gzip is built into every HDF5 library. One record per store and filter."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterator

import h5py
import numpy as np

from bench.study import ROOT
from bench.tables import Table

QUESTION = "Which HDF5 filter should the synthetic store use?"
FILTERS = [("none", None, False), ("lzf", None, False), ("gzip", 1, False), ("gzip", 1, True),
           ("gzip", 4, True), ("gzip", 9, True)]


def write(path: Path, images: np.ndarray, rows: int, compression: str | None, level: int | None,
          shuffle: bool) -> float:
    t0 = time.perf_counter()
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("images", (0, *images.shape[1:]), np.uint8, maxshape=(None, *images.shape[1:]),
                              chunks=(rows, *images.shape[1:]), compression=compression,
                              compression_opts=level, shuffle=shuffle)
        for start in range(0, len(images), rows):
            batch = images[start:start + rows]
            ds.resize(start + len(batch), axis=0)
            ds[start:start + len(batch)] = batch
            f.flush()
    return time.perf_counter() - t0


def read(path: Path, rows: int) -> float:
    t0 = time.perf_counter()
    with h5py.File(path, "r") as f:
        ds = f["images"]
        for start in range(0, len(ds), rows):
            ds[start:start + rows]
    return time.perf_counter() - t0


def sources(study: dict[str, Any], seed: int) -> Iterator[tuple[str, np.ndarray]]:
    for store in study["stores"]:
        with h5py.File(ROOT / store if not Path(store).is_absolute() else store, "r") as f:
            yield store, f["images"][:int(f["n_valid"][()])]
    if study.get("random_images"):
        yield "random", np.random.default_rng(seed).integers(0, 256, (study["random_images"], 1, 28, 28), np.uint8)


def run(cfg: dict[str, Any], seed: int, out: Path, device: str) -> Iterator[dict[str, Any]]:
    study = cfg["study"]
    rows, repeats = study.get("rows", 256), study["repeats"]
    for store, images in sources(study, seed):
        raw_mb = images.nbytes / 2 ** 20
        for compression, level, shuffle in FILTERS:
            path = out / "images.h5"
            codec = None if compression == "none" else compression
            w = min(write(path, images, rows, codec, level, shuffle) for _ in range(repeats))
            r = min(read(path, rows) for _ in range(repeats))
            with h5py.File(path, "r") as f:
                stored_mb = f["images"].id.get_storage_size() / 2 ** 20
            yield {"store": store, "filter": compression, "level": level, "shuffle": shuffle, "images": len(images),
                   "mb": round(stored_mb, 3), "ratio": round(raw_mb / stored_mb, 3),
                   "write_mb_per_s": round(raw_mb / w, 1), "read_mb_per_s": round(raw_mb / r, 1)}


def filters(records: list[dict]) -> Table:
    rows = []
    for r in records:
        name = r["filter"] + (f" {r['level']}" if r["level"] else "") + (" + shuffle" if r["shuffle"] else "")
        rows.append([f"{r['store'].split('/')[-2] if '/' in r['store'] else r['store']} ({r['images']:,})", name,
                     f"{r['mb']:.2f}", f"{r['ratio']:.2f}", r["write_mb_per_s"], r["read_mb_per_s"]])
    return Table(["store (images)", "filter", "MB", "ratio", "write MB/s", "read MB/s"], rows)


TABLES = {"filters": filters}


def headline(records: list[dict]) -> str:
    by = {(r["store"], r["filter"], r["level"], r["shuffle"]): r for r in records}
    pairs = [(by[(s, "lzf", None, False)], r) for (s, f, level, shuffle), r in by.items()
             if (f, level, shuffle) == ("gzip", 1, True) and (s, "lzf", None, False) in by]
    if not pairs:
        return ""
    lzf, gz = pairs[0]
    return (f"gzip 1 + shuffle: {100 * (1 - gz['mb'] / lzf['mb']):.0f}% smaller than LZF, read at "
            f"{gz['read_mb_per_s'] / lzf['read_mb_per_s']:.1f}x its speed, readable by every HDF5 tool")
