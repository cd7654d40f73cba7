"""How much faster than deepinversion is fast per stored batch, at generator widths 128 and 64, timed
interleaved in one process so that a changing machine load slows every setting alike?"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Iterator

from bench.setting import run_config, study_fields, teachers
from bench.tables import Table
from fedinv.oneshot.synthesis.ensemble import load_ensemble
from fedinv.oneshot.synthesis.method import ensemble_path, make_synthesizer
from fedinv.oneshot.synthesis.store import make_batch
from fedinv.runtime import resolve_device

QUESTION = "Per stored batch, how much faster is fast than deepinversion, at generator width 128 and 64?"


def run(cfg: dict[str, Any], seed: int, out: Path, device: str) -> Iterator[dict[str, Any]]:
    study, rc = study_fields(cfg), run_config(cfg, seed, device)
    teachers_dir, _, _ = teachers(rc, out)
    dev, batch = resolve_device(device), rc.synthesis.batch_size
    cfgs = {"deepinversion": rc.synthesis.with_method("deepinversion")}
    for w in study["widths"]:
        cfgs[f"fast-width-{w}"] = rc.synthesis.with_method("fast", generator_width=w)
    synths = {k: make_synthesizer(load_ensemble(teachers_dir, dev, ensemble_path(c)), c, None)
              for k, c in cfgs.items()}
    for k, s in synths.items():
        if k != "deepinversion":
            make_batch(s, 0, batch)  # the first batch of a generator warms up allocations
    times: dict[str, list[float]] = {k: [] for k in synths}
    for rep in range(study["repeats"]):
        for k, s in synths.items():
            t0 = time.perf_counter()
            make_batch(s, rep + 1, batch)
            times[k].append(time.perf_counter() - t0)
    best = {k: min(v) for k, v in times.items()}
    yield {"seconds_per_batch": best, "images_per_s": {k: batch / v for k, v in best.items()},
           "speedup_over_deepinversion": {k: best["deepinversion"] / v for k, v in best.items() if k != "deepinversion"},
           "iterations": dataclasses.asdict(cfgs["deepinversion"].params)["iterations"], "batch_size": batch}


def ratios(records: list[dict]) -> Table:
    rows = []
    for r in records:
        for k, s in r["seconds_per_batch"].items():
            rows.append([k, f"{s:.1f}", f"{r['images_per_s'][k]:.2f}",
                         f"{r['speedup_over_deepinversion'][k]:.1f}x" if k in r["speedup_over_deepinversion"] else "1.0x"])
    return Table(["setting", "seconds per batch of 256", "images / s", "vs deepinversion"], rows,
                 "Best of 3 batches each; only the ratios count (the machine's load is in every setting alike).")


TABLES = {"ratios": ratios}


def headline(records: list[dict]) -> str:
    r = records[-1] if records else None
    if not r or "fast-width-64" not in r["speedup_over_deepinversion"]:
        return ""
    return f"fast at width 64: {r['speedup_over_deepinversion']['fast-width-64']:.1f}x deepinversion per batch"
