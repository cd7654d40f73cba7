"""Pictures: image grids (torchvision.utils), label counts per node, bar charts and curves (Pillow)."""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont


def _font() -> ImageFont.ImageFont:
    return ImageFont.load_default()


def label_count_plot(counts: np.ndarray, class_names: Sequence[str] = (), title: str = "",
                     cell: int = 40) -> Image.Image:
    """A dot per (node, class), its area proportional to the count. counts: [num_nodes, num_classes]."""
    counts = np.asarray(counts)
    nodes, classes = counts.shape
    names = list(class_names) or [str(k) for k in range(classes)]
    font = _font()
    left = 12 + max(int(font.getlength(n)) for n in names)
    top, bottom = (28 if title else 10), 40
    width, height = max(left + nodes * cell + 10, 260), top + classes * cell + bottom
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    if title:
        draw.text((10, 8), title, fill="black", font=font)
    peak = max(int(counts.max()), 1)
    for k in range(classes):
        cy = top + k * cell + cell // 2
        draw.text((6, cy - 6), names[k], fill="black", font=font)
        draw.line((left, cy, left + nodes * cell, cy), fill=(230, 230, 230))
    for i in range(nodes):
        cx = left + i * cell + cell // 2
        draw.text((cx - 3 * len(str(i)), top + classes * cell + 6), str(i), fill="black", font=font)
        for k in range(classes):
            if counts[i, k] == 0:
                continue
            cy = top + k * cell + cell // 2
            r = max(1.0, (cell / 2 - 2) * float(np.sqrt(counts[i, k] / peak)))
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=(200, 60, 60))
    draw.text((left, height - 16), f"node (dot area ~ samples; largest = {peak})", fill="black", font=font)
    return img


def rows_per_class(labels: np.ndarray, per_class: int, classes: Sequence[int], seed: int = 0) -> np.ndarray:
    """Indices of up to `per_class` randomly chosen rows of each class in `classes` (seeded)."""
    rng = np.random.default_rng(seed)
    picks = [rng.permutation(np.flatnonzero(labels == k))[:per_class] for k in classes]
    return np.concatenate(picks) if picks else np.empty(0, dtype=np.int64)


def class_grid(images: torch.Tensor, labels: torch.Tensor, class_names: Sequence[str], per_class: int,
               classes: Sequence[int] | None = None, scale: int = 2) -> Image.Image:
    """One row per class of up to `per_class` images, class names on the left.

    images: uint8 [N, C, H, W] pixels (already denormalized); labels [N].
    """
    from torchvision.utils import make_grid

    classes = list(range(len(class_names))) if classes is None else list(classes)
    c, h, w = images.shape[1:]
    rows = []
    for k in classes:
        picked = images[labels == k][:per_class]
        row = torch.zeros(per_class, c, h, w, dtype=torch.uint8)  # blank cells where a class has fewer
        row[: len(picked)] = picked
        rows.append(row)
    grid = make_grid(torch.cat(rows).float() / 255, nrow=per_class, padding=2, pad_value=1.0)
    arr = (grid.clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).numpy())
    picture = Image.fromarray(arr).resize((grid.shape[2] * scale, grid.shape[1] * scale), Image.NEAREST)
    font = _font()
    names = [class_names[k] for k in classes]
    left = 10 + max(int(font.getlength(n)) for n in names)
    canvas = Image.new("RGB", (left + picture.width, picture.height), "white")
    canvas.paste(picture, (left, 0))
    draw = ImageDraw.Draw(canvas)
    cell = (h + 2) * scale
    for i, name in enumerate(names):
        draw.text((4, 2 * scale + i * cell + cell // 2 - 6), name, fill="black", font=font)
    return canvas


def _legend_column(font: ImageFont.ImageFont, names: Iterable[str]) -> float:
    """Width of a legend column: the colour swatch, the longest name and a gap."""
    return 14 + max((font.getlength(name) for name in names), default=0) + 16


def bar_chart(groups: Sequence[str], series: dict[str, Sequence[float]], title: str = "",
              colors: Sequence[tuple[int, int, int]] = ((66, 114, 196), (237, 125, 49), (112, 173, 71),
                                                        (165, 165, 165)),
              height: int = 220) -> Image.Image:
    """Grouped vertical bars of values in [0, 1], one group per entry of `groups`."""
    font = _font()
    n_series, bar, gap = len(series), 12, 14
    group_w = n_series * bar + gap
    left, top, bottom = 36, 30, 70
    column = _legend_column(font, series)
    # wide enough for the bars, the legend (one row) and the title
    width = int(max(left + len(groups) * group_w + 20, left + n_series * column, left + font.getlength(title) + 10,
                    300))
    img = Image.new("RGB", (width, top + height + bottom), "white")
    draw = ImageDraw.Draw(img)
    draw.text((left, 6), title, fill="black", font=font)
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = top + height - tick * height
        draw.line((left, y, width - 10, y), fill=(225, 225, 225))
        draw.text((4, y - 6), f"{tick:.2f}", fill="black", font=font)
    for s, (name, values) in enumerate(series.items()):
        for g, v in enumerate(values):
            x0 = left + g * group_w + s * bar + gap // 2
            v = 0.0 if v != v else max(0.0, min(1.0, float(v)))  # NaN (no images) draws nothing
            draw.rectangle((x0, top + height - v * height, x0 + bar - 2, top + height), fill=colors[s % len(colors)])
        lx = left + s * column
        draw.rectangle((lx, top + height + 48, lx + 10, top + height + 58), fill=colors[s % len(colors)])
        draw.text((lx + 14, top + height + 46), name, fill="black", font=font)
    for g, name in enumerate(groups):
        x0 = left + g * group_w + gap // 2
        draw.text((x0, top + height + 4), name[:10], fill="black", font=font)
    return img


def confusion_plot(cm: np.ndarray, class_names: Sequence[str], cell: int = 34) -> Image.Image:
    """A confusion matrix (rows: true label, columns: predicted), each row shaded by its share."""
    cm = np.asarray(cm)
    k = len(cm)
    font = _font()
    left = 12 + max(int(font.getlength(n)) for n in class_names)
    top = 24
    img = Image.new("RGB", (left + k * cell + 10, top + k * cell + 40), "white")
    draw = ImageDraw.Draw(img)
    draw.text((left, 6), "predicted ->", fill="black", font=font)
    shares = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    for i in range(k):
        draw.text((6, top + i * cell + cell // 2 - 6), class_names[i], fill="black", font=font)
        draw.text((left + i * cell + cell // 2 - 4, top + k * cell + 6), str(i), fill="black", font=font)
        for j in range(k):
            shade = int(255 * (1 - shares[i, j]))
            x0, y0 = left + j * cell, top + i * cell
            draw.rectangle((x0, y0, x0 + cell - 1, y0 + cell - 1), fill=(shade, shade, 255), outline=(230, 230, 230))
            text = str(int(cm[i, j]))
            draw.text((x0 + 3, y0 + cell // 2 - 6), text, fill="white" if shares[i, j] > 0.5 else "black", font=font)
    return img


def epoch_curves(histories: dict[str, list[dict[str, Any]]], keys: Sequence[str], title: str) -> Image.Image:
    """Per-epoch curves of training histories ({name: [{"loss": ..., key: ...}, ...]}): each of `keys`
    (accuracies in [0, 1]) and the loss divided by its largest value, against the epoch."""
    curves: dict[str, list[tuple[float, float]]] = {}
    for name, history in histories.items():
        for key in keys:
            points = [(i + 1.0, float(h[key])) for i, h in enumerate(history) if h.get(key) is not None]
            if points:
                curves[f"{name}{key.replace('_', ' ')}"] = points
        top = max((h["loss"] for h in history), default=0.0) or 1.0
        curves[f"{name}loss / max"] = [(i + 1.0, h["loss"] / top) for i, h in enumerate(history)]
    return line_plot(curves, title=title, x_label="epoch")


def line_plot(curves: dict[str, Sequence[tuple[float, float]]], title: str = "", x_label: str = "round",
              width: int = 560, height: int = 300) -> Image.Image:
    """One polyline per entry of `curves` ({name: [(x, y), ...]}), axes scaled to the data, legend below."""
    font = _font()
    palette = ((66, 114, 196), (237, 125, 49), (112, 173, 71), (165, 165, 165), (255, 192, 0), (91, 155, 213),
               (158, 72, 14), (99, 37, 110), (38, 68, 120), (200, 30, 30))
    points = [p for c in curves.values() for p in c]
    x_max = max((p[0] for p in points), default=1.0)
    y_lo = min((p[1] for p in points), default=0.0)
    y_lo, y_hi = math.floor(y_lo * 10) / 10, 1.0
    left, top, right, bottom = 44, 28, 16, 40
    column = _legend_column(font, curves)  # as many columns as fit in the width
    columns = max(1, min(len(curves), int((width - left) // column)))
    legend_rows = -(-len(curves) // columns)
    img = Image.new("RGB", (width, top + height + bottom + 16 * legend_rows), "white")
    draw = ImageDraw.Draw(img)
    draw.text((left, 6), title, fill="black", font=font)

    def xy(x: float, y: float) -> tuple[float, float]:
        return (left + x / max(x_max, 1e-9) * (width - left - right),
                top + height - (y - y_lo) / max(y_hi - y_lo, 1e-9) * height)

    for i in range(6):
        tick = y_lo + (y_hi - y_lo) * i / 5
        _, y = xy(0, tick)
        draw.line((left, y, width - right, y), fill=(225, 225, 225))
        draw.text((2, y - 6), f"{tick:.2f}", fill="black", font=font)
    draw.text((width - right - 6 * len(f"{x_label} {x_max:g}"), top + height + 4), f"{x_label} {x_max:g}",
              fill="black", font=font)
    draw.text((left, top + height + 4), "0", fill="black", font=font)
    for i, (name, curve) in enumerate(curves.items()):
        color = palette[i % len(palette)]
        pts = [xy(x, y) for x, y in curve]
        if len(pts) > 1:
            draw.line(pts, fill=color, width=2)
        elif pts:
            draw.ellipse((pts[0][0] - 2, pts[0][1] - 2, pts[0][0] + 2, pts[0][1] + 2), fill=color)
        lx, ly = left + (i % columns) * column, top + height + 22 + (i // columns) * 16
        draw.rectangle((lx, ly + 2, lx + 10, ly + 12), fill=color)
        draw.text((lx + 14, ly), name, fill="black", font=font)
    return img
