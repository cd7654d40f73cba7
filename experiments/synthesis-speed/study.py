"""How fast does each synthesis method make images, and how close is the per-batch engine to the bare
forward + backward of the same teachers?

One record per (variant, seed): loop_img_it_per_s and batched_img_it_per_s (the engine, img*it/s =
images per batch x optimizer steps per second), ceiling_img_it_per_s and ceiling_batched_img_it_per_s
(the same sampled teachers' bare forward + backward to the images: no hooks, BN/TV losses, jitter or
Adam), engine_over_ceiling, then per method a store of `method_images`: <method>_images_per_s and
<method>_audit_agreement (the share a reference classifier assigns to the image's label, as `fedinv
audit`), fast_over_deepinversion, peak_rss_mb. Run it alone on the machine: it times.
"""

from __future__ import annotations

import dataclasses
import resource
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch.func import functional_call, vmap

from bench.setting import reference, run_config, study_fields, teachers
from bench.tables import Table, number, pct
from fedinv.config import to_dict
from fedinv.oneshot.audit import audit_store
from fedinv.oneshot.synthesis.deepinversion import invert_batch, pixel_bounds
from fedinv.oneshot.synthesis.ensemble import load_ensemble
from fedinv.oneshot.synthesis.labels import sample_teachers
from fedinv.oneshot.synthesis.synthesize import synthesize
from fedinv.runtime import resolve_device, resolve_precision

QUESTION = "How many images a second does each synthesis method make, and how good are they?"
METHODS = ("deepinversion", "fast", "dense")


def rate(fn: Callable[[], None], batch: int, iterations: int, repeats: int) -> float:
    """Best of `repeats` timings of fn() (which runs `iterations` steps), in img*it/s."""
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return batch * iterations / best


def engine_rates(teachers_dir: Path, rc, study: dict[str, Any], dev: torch.device) -> dict[str, float]:
    syn = dataclasses.replace(rc.synthesis.with_method("deepinversion", iterations=study["iterations"]))
    batch, its, reps, per_step = syn.batch_size, study["iterations"], study["repeats"], syn.teachers_per_step
    amp = resolve_precision(syn.precision, dev)
    sets = {path: load_ensemble(teachers_dir, dev, path) for path in ("batched", "loop")}
    info = sets["loop"].info
    bounds = pixel_bounds(info, dev)
    y = torch.arange(batch) % info.num_classes
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    out = {}
    for path, ts in sets.items():
        def engine(ts=ts):
            invert_batch(ts, y, syn, batch_index=0, bounds=bounds, gen=torch.Generator().manual_seed(0), amp_dtype=amp)
            sync()
        out[f"{path}_img_it_per_s"] = rate(engine, batch, its, reps)
    ts, ts_loop = sets["batched"], sets["loop"]
    x = torch.randn(batch, *info.image_shape, device=dev, requires_grad=True)
    yd = y.to(dev)

    def bare_loop():
        gen = torch.Generator().manual_seed(0)
        for _ in range(its):
            for i in sample_teachers(len(ts), per_step, gen).tolist():
                out_ = ts_loop.models[i](x)  # channels_last, as the engine's loop runs them
                torch.nn.functional.cross_entropy(out_.float(), yd).backward()
        sync()

    def bare_batched():
        gen = torch.Generator().manual_seed(0)
        for _ in range(its):
            idx = sample_teachers(len(ts), per_step, gen).to(dev)
            p = {k: v[idx] for k, v in ts.params.items()}
            b = {k: v[idx] for k, v in ts.buffers.items()}
            out_ = vmap(lambda pp, bb: functional_call(ts.template, (pp, bb), (x,)))(p, b)
            torch.nn.functional.cross_entropy(out_.float().flatten(0, 1), yd.repeat(len(idx))).backward()
        sync()

    with torch.autocast(dev.type, dtype=amp, enabled=amp is not None):
        out["ceiling_img_it_per_s"] = rate(bare_loop, batch, its, reps)
        out["ceiling_batched_img_it_per_s"] = rate(bare_batched, batch, its, reps)
    path = "batched" if sets["batched"].batched and dev.type == "cuda" else "loop"
    out.update(batched_over_loop=out["batched_img_it_per_s"] / out["loop_img_it_per_s"], engine_path=path,
               engine_img_it_per_s=out[f"{path}_img_it_per_s"],
               engine_over_ceiling=out[f"{path}_img_it_per_s"] / max(out["ceiling_img_it_per_s"],
                                                                     out["ceiling_batched_img_it_per_s"]))
    return out


def run(cfg: dict[str, Any], seed: int, out: Path, device: str) -> Iterator[dict[str, Any]]:
    study, rc, dev = study_fields(cfg), run_config(cfg, seed, device), resolve_device(device)
    teachers_dir, _, _ = teachers(rc, out)
    result: dict[str, Any] = engine_rates(teachers_dir, rc, study, dev)
    ref = reference(rc, out, study["reference_epochs"])
    for method in study["methods"]:
        own = {"iterations": study["method_iterations"]} if method == "deepinversion" else {}
        mcfg = dataclasses.replace(rc.synthesis.with_method(method, **own), num_images=study["method_images"])
        store = out / f"{method}.h5"
        store.unlink(missing_ok=True)  # timed from the start
        stats = synthesize(teachers_dir, store, mcfg, progress=False)
        result[f"{method}_images_per_s"] = stats["images"] / stats["seconds"]
        result[f"{method}_audit_agreement"] = audit_store(store, ref, dev)["reference_agreement"]
        result[f"{method}_config"] = to_dict(mcfg)
    if {"fast", "deepinversion"} <= set(study["methods"]):
        result["fast_over_deepinversion"] = result["fast_images_per_s"] / result["deepinversion_images_per_s"]
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    yield result


def methods(records: list[dict]) -> Table:
    """Per method and variant: stored images/s, the speed-up over deepinversion, the audit."""
    rows = []
    for r in records:
        for m in METHODS:
            if f"{m}_images_per_s" in r:
                ratio = r[f"{m}_images_per_s"] / r["deepinversion_images_per_s"]
                rows.append([r["variant"], m, number(r[f"{m}_images_per_s"]), f"{ratio:.2f}x",
                             pct(r[f"{m}_audit_agreement"], 1)])
    return Table(["variant", "method", "images / s", "vs deepinversion", "audit agreement"], rows,
                 "deepinversion at 100 iterations, fast at 5 steps, dense at 30 (their defaults); each writes a "
                 "store of 2,048 images; the variants differ only in the generator's width.")


def engine(records: list[dict]) -> Table:
    rows = [[r["variant"], number(r["loop_img_it_per_s"], 0), number(r["batched_img_it_per_s"], 0),
             number(r["ceiling_img_it_per_s"], 0), number(r["ceiling_batched_img_it_per_s"], 0),
             f"{r['engine_over_ceiling']:.2f}", f"{r['batched_over_loop']:.2f}", f"{r['peak_rss_mb']:.0f} MB"]
            for r in records]
    return Table(["variant", "engine, loop", "engine, batched (vmap)", "ceiling, loop", "ceiling, vmapped",
                  "engine / ceiling", "batched / loop", "peak RSS"], rows, "img·it/s, batch 256, 3 of 5 teachers a step.")


def defaults(records: list[dict]) -> Table:
    """`methods` at the generator's default width (64) only: the page of headline results."""
    table = methods([r for r in records if r["variant"] == "width-64"])
    return Table(list(table.columns)[1:], [row[1:] for row in table.rows],
                 "deepinversion at 100 iterations, fast at 5 steps, dense at 30 (their defaults, generator width 64); "
                 "each writes a store of 2,048 images.")


TABLES = {"methods": methods, "engine": engine, "defaults": defaults}


def headline(records: list[dict]) -> str:
    r = next((r for r in records if r["variant"] == "width-64"), None)
    return (f"fast stores {r['fast_over_deepinversion']:.1f}x the images/s of deepinversion "
            f"({r['fast_images_per_s']:.0f} vs {r['deepinversion_images_per_s']:.1f}, 2 CPU cores)") if r else ""
