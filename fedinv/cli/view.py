"""`fedinv view` and `fedinv audit`."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click
import torch

from ..config import SEED, DataConfig, Range, click_options, pick
from ..data.datasets import load_dataset
from ..errors import ConfigError
from ..oneshot.audit import audit_store
from ..oneshot.synthesis.ensemble import load_ensemble
from ..runtime import finite, resolve_device, save_json, save_png, to_json
from ..store import read_labels, read_meta, read_rows
from ..viz import bar_chart, class_grid, rows_per_class, side_by_side
from .parsing import check_option, parse_numbers, trust_model_option


@click.command("view")
@click.argument("store", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="PNG to write")
@click.option("--per-class", default=8, show_default=True, help="images per class (one row per class), in [1, 1000]")
@click.option("--classes", default=None, help="only these classes, e.g. 0,3 or 0-4 (default: all)")
@click.option("--scale", default=2, show_default=True, help="pixel magnification (nearest neighbour), in [1, 16]")
@click.option("--split", type=click.Choice(["train", "test"]), default="train", show_default=True,
              help="which split of real images to show (without STORE, or with --compare-real)")
@click.option("--seed", default=0, show_default=True, help="which images: a seeded random pick per class")
@click.option("--compare-real", is_flag=True,
              help="with STORE: beside the synthetic grid, real images of the same classes from the store's dataset "
                   "(its --split, found under --data-root)")
@click_options(DataConfig)
def view_cmd(store: Path | None, out: Path, per_class: int, classes: str | None, scale: int, split: str,
             seed: int, compare_real: bool, **kwargs) -> None:
    """Write an image grid, one row per class, of a synthetic STORE (HDF5) or of --dataset.

    Without STORE, images come from the dataset given by --dataset (and --data-root). With STORE and
    --compare-real, the store's images on the left and real ones of its dataset on the right.
    """
    check_option("--per-class", per_class, Range(1, 1000))
    check_option("--scale", scale, Range(1, 16))  # a scale of 100000 asked for a picture no memory holds
    check_option("--seed", seed, SEED)
    data_cfg = pick(DataConfig, kwargs)  # checked even when a STORE makes it unused
    if out.suffix.lower() != ".png":
        raise ConfigError(f"--out {out}: the grid is written as PNG; give a file name ending in .png")
    if compare_real and store is None:
        raise ConfigError("--compare-real puts a STORE's images beside real ones; give the STORE")
    real: DataConfig | None = None
    if store is not None:
        meta = read_meta(store)
        if meta["n_valid"] == 0:
            raise ConfigError(f"{store} holds no images yet (a synthesis stopped before its first batch); "
                              f"continue it by rerunning its `fedinv synthesize` command")
        names = meta["dataset"]["class_names"]
        labels = read_labels(store).numpy()
        method = (meta.get("config") or {}).get("method", "")
        title = f"{store.name}: {meta['n_valid']} synthetic images" + (f" ({method})" if method else "")
        wanted = parse_numbers(classes, "--classes") or list(range(len(names)))
        images, labels_t, _ = read_rows(store, rows_per_class(labels, per_class, wanted, seed))
        if compare_real:
            real = dataclasses.replace(data_cfg, dataset=meta["dataset"]["name"], image_size=meta["image_shape"][1])
    else:
        data = load_dataset(data_cfg, split)
        names = data.info.class_names
        wanted = parse_numbers(classes, "--classes") or list(range(len(names)))
        rows = torch.as_tensor(rows_per_class(data.labels.numpy(), per_class, wanted, seed))
        images, labels_t = data.images[rows], data.labels[rows]
        title = f"{data.info.name}, {split} split: {len(data)} images"
    bad = [k for k in wanted if not 0 <= k < len(names)]
    if bad:
        raise ConfigError(f"classes {bad} out of range 0..{len(names) - 1}")
    out.parent.mkdir(parents=True, exist_ok=True)
    picture = class_grid(images, labels_t, names, per_class, wanted, scale, title=f"{title}, up to {per_class} a class")
    if real is not None:
        data = load_dataset(real, split)
        rows = torch.as_tensor(rows_per_class(data.labels.numpy(), per_class, wanted, seed))
        picture = side_by_side(picture, class_grid(data.images[rows], data.labels[rows], names, per_class, wanted,
                                                   scale, title=f"real: {data.info.name}, {split} split"))
    save_png(picture, out)
    click.echo(f"{out}: {len(wanted)} classes x up to {per_class} images" + (" and as many real" if real else ""))


@click.command("audit")
@click.option("--store", type=click.Path(dir_okay=False, path_type=Path), required=True, help="synthetic HDF5 store")
@click.option("--reference", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="checkpoint of a reference classifier (e.g. a model trained on all data: `fedinv partition "
                   "--scheme iid --num-nodes 1` then `fedinv train-teachers`)")
@click.option("--teachers", "teachers_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="teachers folder: ensemble confidence from the teachers (default: the stored soft labels)")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="JSON report; a bar chart PNG is written beside it")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps")
@trust_model_option
def audit_cmd(store: Path, reference: Path, teachers_dir: Path | None, out: Path, device: str,
              trust: tuple[str, ...]) -> None:
    """Per class, the share of synthetic images a reference classifier assigns to their label, and
    the teacher ensemble's confidence in it (FedFTG supplementary, Figure 2)."""
    dev = resolve_device(device)
    teachers = load_ensemble(teachers_dir, dev, trust=trust) if teachers_dir else None
    report = finite(audit_store(store, reference, dev, teachers))  # classes without images: null
    save_json(report, out)
    per = report["per_class"]
    def values(key: str) -> list[float]:
        return [float("nan") if p[key] is None else p[key] for p in per]

    chart = bar_chart([p["name"] for p in per],
                      {"reference agrees with label": values("reference_agreement"),
                       "ensemble confidence": values("ensemble_confidence")},
                      title=f"{store.name}: {report['images']} images")
    save_png(chart, out.with_suffix(".png"))
    click.echo(to_json({k: report[k] for k in ("images", "reference_agreement", "ensemble_confidence")}))
