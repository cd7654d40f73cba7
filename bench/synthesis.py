"""Benchmark: synthesis throughput on Fashion-MNIST teachers (batch 256, 3 teachers per step).

Prints one JSON object:
  batched_img_it_per_s   the engine (invert_batch) with the batched (vmap) multi-teacher path
  loop_img_it_per_s      the engine with the per-teacher Python loop
  ceiling_img_it_per_s   bare forward + backward (to the images) of the same sampled teachers,
                         one plain module call each (channels_last): no hooks, no BN/TV losses,
                         no jitter, no Adam
  ceiling_batched_img_it_per_s   the same bare work through the vmapped call
  engine_over_ceiling    the engine's default path for the device over the faster ceiling
  peak_rss_mb            peak resident memory of this process
img*it/s = images per batch x optimizer steps per second. Then, per synthesis method at its
defaults (deepinversion at --method-iterations), a store of --method-images images:
  <method>_images_per_s        stored images per second (synthesis, soft labels and writing)
  <method>_audit_agreement     the share of those images a reference classifier assigns to their
                               label (as `fedinv audit`); the reference is a bncnn trained on all of
                               Fashion-MNIST (--reference-epochs), unless --reference is given
  fast_over_deepinversion      the ratio of stored images per second

    python bench/synthesis.py --teachers runs/demo/teachers --json-out docs/bench-synthesis.json
Without --teachers, 5 teachers are trained for 1 epoch first (speed does not depend on accuracy;
the audit agreement does, so pass real teachers for it).
"""

from __future__ import annotations

import json
import resource
import tempfile
import time
from pathlib import Path

import click
import torch
from bench.machine import describe
from torch.func import functional_call, vmap

from fedinv import __version__
from fedinv.config import DataConfig, PartitionConfig, to_dict
from fedinv.data.datasets import load_dataset
from fedinv.data.partition import make_partition
from fedinv.oneshot.audit import audit_store
from fedinv.oneshot.synthesis.config import SynthesisConfig
from fedinv.oneshot.synthesis.deepinversion import invert_batch, pixel_bounds
from fedinv.oneshot.synthesis.ensemble import load_ensemble
from fedinv.oneshot.synthesis.labels import sample_teachers
from fedinv.oneshot.synthesis.synthesize import synthesize
from fedinv.oneshot.teachers import TeacherConfig, train_teachers
from fedinv.runtime import resolve_device, resolve_precision, save_json

METHODS = ("deepinversion", "fast", "dense")


def rate(fn, batch: int, iterations: int, repeats: int) -> float:
    """Best of `repeats` timings of fn() (which runs `iterations` steps), in img*it/s."""
    fn()  # warm-up
    best = min(_timed(fn) for _ in range(repeats))
    return batch * iterations / best


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


@click.command()
@click.option("--teachers", "teachers_dir", default=None, help="folder of node-K.pt (default: train 5 for 1 epoch)")
@click.option("--batch-size", default=256, show_default=True)
@click.option("--teachers-per-step", default=3, show_default=True)
@click.option("--iterations", default=20, show_default=True, help="steps per timing")
@click.option("--repeats", default=3, show_default=True, help="timings per path (best is kept)")
@click.option("--device", default="auto", show_default=True)
@click.option("--precision", default="auto", show_default=True)
@click.option("--methods", default=",".join(METHODS), show_default=True, help="methods to time and audit ('' = none)")
@click.option("--method-images", default=2048, show_default=True, help="images per method's store")
@click.option("--method-iterations", default=100, show_default=True, help="deepinversion's iterations per batch")
@click.option("--reference", default=None, help="reference classifier checkpoint for the audit")
@click.option("--reference-epochs", default=3, show_default=True, help="epochs of the reference trained here")
@click.option("--json-out", type=click.Path(dir_okay=False), default=None, help="also write the JSON here")
def main(teachers_dir, batch_size, teachers_per_step, iterations, repeats, device, precision, methods,
         method_images, method_iterations, reference, reference_epochs, json_out):
    dev = resolve_device(device)
    with tempfile.TemporaryDirectory() as tmp:
        if teachers_dir is None:
            data = DataConfig(dataset="fashion-mnist")
            labels = load_dataset(data, "train").labels.numpy()
            part = make_partition(labels, 10, PartitionConfig(num_nodes=5, alpha=0.5), data)
            teachers_dir = Path(tmp) / "teachers"
            train_teachers(part, TeacherConfig(epochs=1, device=device), teachers_dir, progress=False)
        cfg = SynthesisConfig.of(batch_size=batch_size, iterations=iterations, teachers_per_step=teachers_per_step,
                                 device=device, precision=precision)
        amp = resolve_precision(precision, dev)
        result = {"benchmark": "synthesis", "fedinv_version": __version__, "config": to_dict(cfg)}
        sets = {path: load_ensemble(teachers_dir, dev, path) for path in ("batched", "loop")}
        info = sets["loop"].info
        bounds = pixel_bounds(info, dev)
        y = torch.arange(batch_size) % info.num_classes
        sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

        for path, ts in sets.items():
            def engine(ts=ts):
                invert_batch(ts, y, cfg, batch_index=0, bounds=bounds, gen=torch.Generator().manual_seed(0),
                             amp_dtype=amp)
                sync()
            result[f"{path}_img_it_per_s"] = rate(engine, batch_size, iterations, repeats)

        ts, ts_loop = sets["batched"], sets["loop"]
        x = torch.randn(batch_size, *info.image_shape, device=dev, requires_grad=True)
        yd = y.to(dev)

        def bare_loop():
            gen = torch.Generator().manual_seed(0)
            for _ in range(iterations):
                for i in sample_teachers(len(ts), teachers_per_step, gen).tolist():
                    out = ts_loop.models[i](x)  # channels_last, as the engine's loop runs them
                    torch.nn.functional.cross_entropy(out.float(), yd).backward()
            sync()

        def bare_batched():
            gen = torch.Generator().manual_seed(0)
            for _ in range(iterations):
                idx = sample_teachers(len(ts), teachers_per_step, gen).to(dev)
                p = {k: v[idx] for k, v in ts.params.items()}
                b = {k: v[idx] for k, v in ts.buffers.items()}
                out = vmap(lambda pp, bb: functional_call(ts.template, (pp, bb), (x,)))(p, b)
                torch.nn.functional.cross_entropy(out.float().flatten(0, 1), yd.repeat(len(idx))).backward()
            sync()

        with torch.autocast(dev.type, dtype=amp, enabled=amp is not None):
            result["ceiling_img_it_per_s"] = rate(bare_loop, batch_size, iterations, repeats)
            result["ceiling_batched_img_it_per_s"] = rate(bare_batched, batch_size, iterations, repeats)
        chosen = [m for m in methods.split(",") if m]
        if chosen:
            if reference is None:
                reference = train_reference(Path(tmp) / "reference", reference_epochs, device)
            for method in chosen:
                own = {"iterations": method_iterations} if method == "deepinversion" else {}
                mcfg = SynthesisConfig.of(method=method, num_images=method_images, batch_size=batch_size,
                                          teachers_per_step=teachers_per_step, device=device, precision=precision,
                                          **own)
                store = Path(tmp) / f"{method}.h5"
                stats = synthesize(teachers_dir, store, mcfg, progress=False)
                result[f"{method}_images_per_s"] = stats["images"] / stats["seconds"]
                result[f"{method}_audit_agreement"] = audit_store(store, reference, dev)["reference_agreement"]
                result[f"{method}_config"] = to_dict(mcfg)
            if {"fast", "deepinversion"} <= set(chosen):
                result["fast_over_deepinversion"] = result["fast_images_per_s"] / result["deepinversion_images_per_s"]
    auto = "batched" if sets["batched"].batched and dev.type == "cuda" else "loop"
    best_ceiling = max(result["ceiling_img_it_per_s"], result["ceiling_batched_img_it_per_s"])
    result.update({
        "batched_over_loop": result["batched_img_it_per_s"] / result["loop_img_it_per_s"],
        "engine_path": auto,  # what --batched auto runs on this device
        "engine_img_it_per_s": result[f"{auto}_img_it_per_s"],
        "engine_over_ceiling": result[f"{auto}_img_it_per_s"] / best_ceiling,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "machine": describe(dev),
    })
    print(json.dumps(result, indent=2))
    if json_out:
        save_json(result, json_out)


def train_reference(folder: Path, epochs: int, device: str) -> Path:
    """A bncnn trained on all of Fashion-MNIST (one IID node): the audit's reference classifier."""
    data = DataConfig(dataset="fashion-mnist")
    labels = load_dataset(data, "train").labels.numpy()
    part = make_partition(labels, 10, PartitionConfig(scheme="iid", num_nodes=1), data)
    train_teachers(part, TeacherConfig(epochs=epochs, device=device), folder, progress=False)
    return folder / "node-0.pt"


if __name__ == "__main__":
    main()
