"""Benchmark: the /images filter of the synthetic store, LZF against gzip (deflate) with shuffle.

LZF ships only with h5py: plain HDF5 tools (h5dump, HDFView, MATLAB, netCDF readers) cannot
decode it. gzip is built into every HDF5 library. This measures, on the images of real stores,
what each filter costs: file size, write time (appended batch by batch, a chunk per batch, as
synthesis writes) and read time (every chunk, as the student reads), best of --repeats.

Prints one JSON object per filter (and appends it with --json-out): filter, level, shuffle,
images, mb, ratio (raw bytes / stored), write_mb_per_s, read_mb_per_s, store.

    python bench/store_compression.py --store runs/oneshot/alpha-0.5-nodes-5-seed-0/fast/synthetic.h5 \
        --json-out docs/bench-store-compression.jsonl
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import click
import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench.records import emit  # noqa: E402

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


@click.command()
@click.option("--store", "stores", multiple=True, required=True, type=click.Path(exists=True, dir_okay=False),
              help="a synthetic store (fedinv synthesize) whose images are measured; repeat for several")
@click.option("--rows", default=256, show_default=True, help="rows per chunk and per append (synthesis batch)")
@click.option("--repeats", default=3, show_default=True, help="timings are the best of this many")
@click.option("--json-out", default=None, help="append each JSON line here")
def main(stores: tuple[str, ...], rows: int, repeats: int, json_out: str | None) -> None:
    for store in stores:
        with h5py.File(store, "r") as f:
            images = f["images"][:int(f["n_valid"][()])]
        raw_mb = images.nbytes / 2 ** 20
        with tempfile.TemporaryDirectory() as tmp:
            for compression, level, shuffle in FILTERS:
                path = Path(tmp) / "images.h5"
                codec = None if compression == "none" else compression
                w = min(write(path, images, rows, codec, level, shuffle) for _ in range(repeats))
                r = min(read(path, rows) for _ in range(repeats))
                with h5py.File(path, "r") as f:
                    stored_mb = f["images"].id.get_storage_size() / 2 ** 20
                emit({"bench": "store_compression", "store": store, "filter": compression, "level": level,
                      "shuffle": shuffle, "images": len(images), "mb": round(stored_mb, 3),
                      "ratio": round(raw_mb / stored_mb, 3), "write_mb_per_s": round(raw_mb / w, 1),
                      "read_mb_per_s": round(raw_mb / r, 1)}, json_out)


if __name__ == "__main__":
    main()
