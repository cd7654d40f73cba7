"""Benchmark: peak memory of train-student on stores of 10,000 and 200,000 images.

The student streams the store in shuffled blocks, so its peak memory should not grow with the
store. Each measurement runs in a fresh process (peak RSS is per process): one epoch of the
default student on soft labels, on a store of random Fashion-MNIST-shaped images.
Prints one JSON object: peak_rss_mb_small, peak_rss_mb_large, ratio (goal <= 1.2), seconds.

    python bench/student_memory.py
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import click
import torch

from fedinv.store import StoreWriter


def make_store(path: Path, n: int, chunk: int = 1000) -> None:
    meta = {"num_classes": 10, "image_shape": [1, 28, 28], "mean": [0.286], "std": [0.353], "seed": 0,
            "config": {"note": "random images for the memory benchmark"}, "teachers": {},
            "dataset": {"name": "fashion-mnist", "class_names": [str(i) for i in range(10)], "hflip": True}}
    g = torch.Generator().manual_seed(0)
    with StoreWriter(path, meta, chunk_rows=256) as w:
        for start in range(0, n, chunk):
            b = min(chunk, n - start)
            w.append(torch.randint(0, 256, (b, 1, 28, 28), dtype=torch.uint8, generator=g),
                     torch.randint(0, 10, (b,), generator=g), torch.full((b, 10), -2.3026),
                     torch.zeros(b, 2, dtype=torch.int32))


def measure(store: Path, out: Path) -> dict:
    code = (
        "import json, resource, time\n"
        "from fedinv.config import StudentConfig\n"
        "from fedinv.student.train import train_student\n"
        "t0 = time.perf_counter()\n"
        f"train_student({str(store)!r}, {str(out)!r}, StudentConfig(epochs=1, device='cpu'), progress=False)\n"
        "print(json.dumps({'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,"
        " 'seconds': time.perf_counter() - t0}))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


@click.command()
@click.option("--small", default=10_000, show_default=True)
@click.option("--large", default=200_000, show_default=True)
def main(small, large):
    with tempfile.TemporaryDirectory() as tmp:
        results = {}
        for name, n in (("small", small), ("large", large)):
            store = Path(tmp) / f"{name}.h5"
            make_store(store, n)
            results[name] = measure(store, Path(tmp) / f"student-{name}")
            store.unlink()
    print(json.dumps({"benchmark": "student_memory", "images_small": small, "images_large": large,
                      "peak_rss_mb_small": results["small"]["peak_rss_mb"],
                      "peak_rss_mb_large": results["large"]["peak_rss_mb"],
                      "ratio": results["large"]["peak_rss_mb"] / results["small"]["peak_rss_mb"],
                      "seconds_small": results["small"]["seconds"], "seconds_large": results["large"]["seconds"],
                      "bench_process_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


if __name__ == "__main__":
    main()
