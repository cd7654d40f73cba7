"""Does the student's memory stay flat as the store grows? It streams the store in shuffled blocks, so
its peak memory should not grow with the store. One record: peak RSS of one epoch on each store."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import torch

from bench.study import ROOT
from bench.tables import Table
from fedinv.store import StoreWriter

QUESTION = "Does the student's memory stay flat when the store grows 20x?"


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


def measure(store: Path, out: Path, model: str) -> dict:
    code = (
        "import json, resource, time\n"
        "from fedinv.oneshot.student.config import StudentConfig\n"
        "from fedinv.oneshot.student.train import train_student\n"
        "t0 = time.perf_counter()\n"
        f"train_student({str(store)!r}, {str(out)!r}, StudentConfig(model={model!r}, epochs=1, device='cpu'), "
        "progress=False)\n"
        "print(json.dumps({'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,"
        " 'seconds': time.perf_counter() - t0}))\n")
    res = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=ROOT)
    return json.loads(res.stdout.strip().splitlines()[-1])


def run(cfg: dict[str, Any], seed: int, out: Path, device: str) -> Iterator[dict[str, Any]]:
    study, results = cfg["study"], {}
    for name in ("small", "large"):
        store = out / f"{name}.h5"
        store.unlink(missing_ok=True)
        make_store(store, study[name])
        results[name] = measure(store, out / f"student-{name}", study.get("model", "bncnn"))
        store.unlink()
    yield {"images_small": study["small"], "images_large": study["large"],
           "peak_rss_mb_small": results["small"]["peak_rss_mb"], "peak_rss_mb_large": results["large"]["peak_rss_mb"],
           "ratio": results["large"]["peak_rss_mb"] / results["small"]["peak_rss_mb"],
           "seconds_small": results["small"]["seconds"], "seconds_large": results["large"]["seconds"]}


def memory(records: list[dict]) -> Table:
    return Table(["store images (small / large)", "peak RSS small", "peak RSS large", "ratio"],
                 [[f"{r['images_small']:,} / {r['images_large']:,}", f"{r['peak_rss_mb_small']:.0f} MB",
                   f"{r['peak_rss_mb_large']:.0f} MB", f"{r['ratio']:.2f}"] for r in records])


TABLES = {"memory": memory}


def headline(records: list[dict]) -> str:
    return f"20x the store, {records[-1]['ratio']:.2f}x the peak memory" if records else ""
