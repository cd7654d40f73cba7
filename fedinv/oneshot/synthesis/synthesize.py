"""`fedinv synthesize` as a library call: teachers folder in, HDF5 store out, batch by batch;
under torchrun the batches are split over the ranks."""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import time
from pathlib import Path
from typing import Any, Collection

import torch
import torch.distributed as dist
from torch import nn

from ...data.datasets import DatasetInfo
from ...distributed import World, process_group, rank_device, shard_path, world_from_env
from ...errors import ConfigError, RunStateError
from ...models import place
from ...runtime import MetricsLog, progress_bar, ran_on, resolve_device, resolve_precision, save_png
from ...store import StoreWriter, merge_shards, read_meta, store_meta
from ...train.resume import changes, comparable
from ...viz import line_plot
from ..teacher_files import Teachers, as_teachers
from .claims import apply_claims
from .config import SynthesisConfig
from .ensemble import check_student, load_ensemble
from .method import Synthesizer, ensemble_path, make_synthesizer
from .store import append_batch, open_synthesis_store, state_path

log = logging.getLogger(__name__)


def synthesis_meta(folder: Teachers, cfg: SynthesisConfig, existing: Path | None = None
                   ) -> tuple[dict[str, Any], tuple[str, ...]]:
    """The store metadata of a synthesis run from `folder` with `cfg`, and the metadata keys to
    rewrite in `existing`. When `existing` is a store made by the same run (by `changes`: e.g. by an
    older fedinv, without fields added since at their defaults, or with teachers recorded by file
    hash), what it records is kept, so it can be continued. A store made with fewer `num_images`
    and otherwise the same settings grows: its batches are the first ones of this run (batch b
    depends on (seed, b) and the carried state alone), so it is continued up to `num_images` and
    records the new config."""
    config, teachers = comparable(cfg), folder.hashes()
    renew: tuple[str, ...] = ()
    if existing is not None and existing.is_file():
        try:
            saved = read_meta(existing)
        except ConfigError:
            saved = None  # not a store: the writer says so
        diff = changes(saved["config"], cfg) if saved is not None else []
        if diff == ["num_images"]:
            check_growth(existing, saved["config"], cfg)
            saved["config"] = {**saved["config"], "num_images": cfg.num_images}
            renew = ("config",)
        elif diff:
            raise RunStateError(f"{existing} was made with other settings ({', '.join(diff)}); continue it with the "
                                f"options that made it, or choose another --out")
        if saved is not None:
            config = saved["config"]
        if saved is not None and saved["teachers"] == folder.file_hashes():  # recorded by file, as before
            teachers = saved["teachers"]
    return store_meta(folder.info, seed=cfg.seed, config=config, teachers=teachers), renew


def check_growth(existing: Path, saved: dict[str, Any], cfg: SynthesisConfig) -> None:
    """A store asked for more images than it was made for grows only from whole batches; one asked
    for fewer is an error (it would be cut)."""
    made = int(saved["num_images"])
    if cfg.num_images < made:
        raise RunStateError(f"{existing} was made for {made} images; --num-images {cfg.num_images} would cut it: "
                            f"ask for {made} or more to continue (or grow) it, or choose another --out")
    if made % cfg.batch_size:
        raise RunStateError(f"{existing} was made for {made} images, which ends in a partial batch of "
                            f"{made % cfg.batch_size} (batch size {cfg.batch_size}); only a store of whole "
                            f"batches can grow: choose another --out")


def check_teachers_per_step(cfg: SynthesisConfig, num_teachers: int) -> None:
    """More teachers per step than there are is an error, but for the default (3: all when fewer)."""
    default = next(f.default for f in dataclasses.fields(cfg) if f.name == "teachers_per_step")
    if cfg.teachers_per_step > num_teachers and cfg.teachers_per_step != default:
        raise ConfigError(f"--teachers-per-step must be in [0, {num_teachers}] with {num_teachers} teachers "
                          f"(0 = all), got {cfg.teachers_per_step}")


def check_shardable(cfg: SynthesisConfig) -> None:
    """Only deepinversion's batches can be split over processes (the generator methods carry state)."""
    if not cfg.per_batch:
        raise ConfigError(f"--method {cfg.method} carries its generator from batch to batch and runs in one "
                          f"process; drop torchrun, or use --method deepinversion")


def synthesize(teachers: str | Path | Teachers, out: str | Path, cfg: SynthesisConfig, *, resume: bool = True,
               student: nn.Module | None = None, progress: bool = True, shard: tuple[int, int] = (0, 1),
               trust: Collection[str] = (), tensorboard: bool = False) -> dict[str, Any]:
    """Synthesize `cfg.num_images` images from `teachers` into the store `out` (with `tensorboard`,
    each batch's losses and a grid of its first images also go to OUT.tensorboard/).

    `teachers`: a teachers folder (`node-K.pt` checkpoints; `trust` names the `module:factory`
    models they may use, see `load_checkpoint`), or `TeacherModels` held in memory.

    Batch b is drawn from random stream (seed, b) and, for the generator methods, the state they
    carry (saved beside the store after every batch): a resumed run continues at the first batch
    not in the store and writes exactly what an uninterrupted run would (an existing store of the same
    settings and teachers is continued; `resume=False` refuses it). `shard=(r, W)` writes only
    the batches b with b mod W == r (one rank of `synthesize_distributed`; deepinversion only).
    """
    rank, world = shard
    if not 0 <= rank < world:
        raise ConfigError(f"shard {rank} of {world} does not exist")
    if world > 1:
        check_shardable(cfg)
    device = resolve_device(cfg.device)
    amp_dtype = resolve_precision(cfg.precision, device)
    folder = as_teachers(teachers, trust)
    ensemble = load_ensemble(folder, device, ensemble_path(cfg))
    check_teachers_per_step(cfg, len(ensemble))
    claims = apply_claims(ensemble, cfg.claims, cfg.seed)
    if not ensemble.info.hflip and cfg.flip:
        log.info("%s: flips change labels here, so --flip is ignored", ensemble.info.name)
        cfg = dataclasses.replace(cfg, flip=False)
    if student is not None:
        student = place(student, device).eval().requires_grad_(False)
        check_student(student, ensemble, device)
    num_batches = math.ceil(cfg.num_images / cfg.batch_size)
    stats: dict[str, Any] = {"batches": 0, "images": 0, "seconds": 0.0, "last_losses": None}
    mine = list(range(rank, num_batches, world))
    sizes = [min(cfg.batch_size, cfg.num_images - b * cfg.batch_size) for b in mine]
    synth = make_synthesizer(ensemble, cfg, amp_dtype)
    meta, renew = synthesis_meta(folder, cfg, Path(out) if resume else None)
    stats["ran_on"] = ran_on(device, amp_dtype)
    fresh = not Path(out).exists()
    try:
        with open_synthesis_store(out, meta, synth, resume=resume, chunk_rows=cfg.batch_size, renew=renew) as store:
            store.record_run(stats["ran_on"])
            if claims is not None:
                stats["claims"] = claims.record()
                store.record_claims(stats["claims"])
            write_batches(store, synth, cfg, mine, sizes, stats, student, progress,
                          tensorboard_path(Path(out)) if tensorboard else None, ensemble.info)
        if world == 1:  # a shard's curves are drawn once the shards are merged
            draw_curves(Path(out), cfg.method)
    except BaseException:
        if fresh:
            discard_if_empty(Path(out))  # a first batch that failed leaves nothing a rerun would refuse
        raise
    return stats


def write_batches(store: StoreWriter, synth: Synthesizer, cfg: SynthesisConfig, mine: list[int], sizes: list[int],
                  stats: dict[str, Any], student: nn.Module | None, progress: bool,
                  tensorboard: Path | None = None, info: DatasetInfo | None = None) -> None:
    """Append the batches `mine` (of `sizes` images) the store does not hold yet; counts into `stats`.
    `tensorboard`: a folder for the batches' losses and a grid of each batch's first 64 images
    (denormalized by `info`)."""
    n = store.n_valid
    ends = list(itertools.accumulate(sizes))
    if n and n not in ends:
        raise RunStateError(f"{store.path} holds {n} images, not a whole number of this run's batches")
    start = ends.index(n) + 1 if n else 0
    if start:
        log.info("resuming %s after %d of %d batches", store.path, start, len(mine))
    bar = progress_bar(total=len(mine), initial=start, desc=f"synthesize ({cfg.method})", unit="batch", show=progress)
    done = set(mine[:start])
    metrics_log = MetricsLog(metrics_path(store.path), tensorboard).start(keep=lambda line: line.get("batch") in done)

    def show(step: int, losses: dict[str, float]) -> None:
        bar.set_postfix(step=step, **{k: f"{v:.3g}" for k, v in losses.items()})

    for b, size in zip(mine[start:], sizes[start:]):
        t0 = time.perf_counter()
        inv = append_batch(store, synth, b, size, student=student, on_step=show if progress else None)
        stats["batches"] += 1
        stats["images"] += size
        stats["seconds"] += time.perf_counter() - t0
        stats["last_losses"] = inv.losses
        metrics_log.append({"batch": b, "images": size, **inv.losses, "seconds": time.perf_counter() - t0})
        if tensorboard is not None and info is not None:
            metrics_log.image("synthetic batch", batch_grid(inv.x, info), b)
        bar.update(1)
        bar.set_postfix(img_per_s=f"{stats['images'] / stats['seconds']:.2f}",
                        **{k: f"{v:.3g}" for k, v in inv.losses.items()})
        log.debug("batch %d: %s", b, inv.losses)
    bar.close()
    metrics_log.close()
    stats["n_valid"] = store.n_valid


def batch_grid(x: torch.Tensor, info: DatasetInfo, count: int = 64) -> torch.Tensor:
    """[3 or 1, H, W] in [0, 1]: the first `count` normalized images of a batch, denormalized, 8 a row."""
    from torchvision.utils import make_grid

    mean = torch.tensor(info.mean).view(1, -1, 1, 1)
    std = torch.tensor(info.std).view(1, -1, 1, 1)
    return make_grid((x[:count].detach().float().cpu() * std + mean).clamp(0, 1), nrow=8, padding=1, pad_value=1.0)


def metrics_path(store: Path) -> Path:
    """OUT.metrics.jsonl beside the store OUT: a line per synthesized batch."""
    return store.with_name(store.name + ".metrics.jsonl")


def curves_path(store: Path) -> Path:
    """OUT.curves.png beside the store OUT: its loss terms per batch."""
    return store.with_name(store.name + ".curves.png")


def draw_curves(store: Path, method: str) -> None:
    """Each loss term at the last step of each batch, from OUT.metrics.jsonl, into OUT.curves.png."""
    lines = MetricsLog(metrics_path(store)).lines()
    positive = {k for line in lines for k, v in line.items() if isinstance(v, (int, float)) and v > 0}  # a log axis
    terms = sorted(positive - {"batch", "images", "seconds"})
    curves = {k: [(line["batch"] + 1, line[k]) for line in lines if k in line] for k in terms}
    save_png(line_plot(curves, title=f"{store.name}: synthesis losses per batch ({method})", x_label="batch",
                       y_label="loss at the batch's last step", log_y=True), curves_path(store))


def tensorboard_path(store: Path) -> Path:
    """OUT.tensorboard/ beside the store OUT: its TensorBoard event files."""
    return store.with_name(store.name + ".tensorboard")


def discard_if_empty(store: Path) -> None:
    """Remove a store (and its generator state and metrics) that holds no rows yet."""
    try:
        empty = read_meta(store)["n_valid"] == 0
    except (ConfigError, RunStateError):
        return
    if empty:
        store.unlink(missing_ok=True)
        state_path(store).unlink(missing_ok=True)
        metrics_path(store).unlink(missing_ok=True)
        curves_path(store).unlink(missing_ok=True)


def synthesize_distributed(teachers: str | Path | Teachers, out: str | Path, cfg: SynthesisConfig, *,
                           resume: bool = True, progress: bool = True, world: World | None = None,
                           **kwargs: Any) -> dict[str, Any]:
    """`synthesize` split over the ranks of `world` (default: from torchrun's environment).

    Rank r synthesizes the batches b with b mod K == r into its own shard `OUT.rank-r-of-K.h5`;
    when all ranks are done, rank 0 interleaves the shards into OUT in batch order and removes
    them. Every batch is drawn from (seed, b) alone, so OUT holds what a single process would have
    written (bit for bit when both use the same number of CPU threads per process: torchrun sets 1).
    """
    world = world or world_from_env()
    if not world.is_distributed:
        return synthesize(teachers, out, cfg, resume=resume, progress=progress, **kwargs)
    check_shardable(cfg)
    out = Path(out)
    if out.exists() and not resume:
        raise RunStateError(f"{out} exists (resume=False asks for a fresh store); choose another --out")
    if out.exists() and read_meta(out)["config"].get("num_images", cfg.num_images) < cfg.num_images:
        raise RunStateError(f"{out} holds a finished store of fewer images; a store grows in one process: run "
                            f"`fedinv synthesize` with the same options without torchrun")
    cfg = dataclasses.replace(cfg, device=rank_device(cfg.device, world))
    with process_group(world, cfg.device):
        stats: dict[str, Any] = {}
        if not out.exists():  # a finished merge from an earlier run is complete
            stats = synthesize(teachers, shard_path(out, world), cfg, resume=resume,
                               progress=progress and world.rank == 0, shard=(world.rank, world.size), **kwargs)
        dist.barrier()
        if world.rank == 0 and not out.exists():
            shards = [shard_path(out, world, r) for r in range(world.size)]
            lines = sorted((line for s in shards for line in MetricsLog(metrics_path(s)).lines()),
                           key=lambda line: line["batch"])
            merge_shards(shards, out, cfg.batch_size)
            merged = MetricsLog(metrics_path(out)).start()
            for line in lines:
                merged.append(line)
            for s in shards:
                s.unlink()
                metrics_path(s).unlink(missing_ok=True)
            draw_curves(out, cfg.method)
        dist.barrier()
        job = job_stats(stats)
    n_valid = read_meta(out)["n_valid"] if world.rank == 0 else None
    return {**stats, **job, "n_valid": n_valid, "world_size": world.size, "out": str(out)}


def job_stats(stats: dict[str, Any]) -> dict[str, Any]:
    """This rank's batches, images and seconds summed (seconds: the slowest rank's) over every rank:
    what the whole job did, as rank 0 reports it."""
    totals = torch.tensor([float(stats.get("batches", 0)), float(stats.get("images", 0))], dtype=torch.float64)
    slowest = torch.tensor([float(stats.get("seconds", 0.0))], dtype=torch.float64)
    dist.all_reduce(totals)
    dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
    return {"batches": int(totals[0]), "images": int(totals[1]), "seconds": float(slowest[0])}
