"""Pictures: image grids (torchvision.utils and Pillow), and charts drawn by matplotlib (its Agg
renderer on a figure of our own: no pyplot, no global backend or state) returned as PIL images:
label counts per node, bar charts, a confusion matrix, training curves, line plots."""

from __future__ import annotations

import io
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont


def _font() -> ImageFont.ImageFont:
    return ImageFont.load_default()


def rows_per_class(labels: np.ndarray, per_class: int, classes: Sequence[int], seed: int = 0) -> np.ndarray:
    """Indices of up to `per_class` randomly chosen rows of each class in `classes` (seeded)."""
    rng = np.random.default_rng(seed)
    picks = [rng.permutation(np.flatnonzero(labels == k))[:per_class] for k in classes]
    return np.concatenate(picks) if picks else np.empty(0, dtype=np.int64)


def class_grid(images: torch.Tensor, labels: torch.Tensor, class_names: Sequence[str], per_class: int,
               classes: Sequence[int] | None = None, scale: int = 2, title: str = "") -> Image.Image:
    """One row per class of up to `per_class` images, class names (and how many of the row are shown) on
    the left, `title` above; a class with fewer images leaves its slots blank (white), and its name
    says how many it has.

    images: uint8 [N, C, H, W] pixels (already denormalized); labels [N].
    """
    from torchvision.utils import make_grid

    classes = list(range(len(class_names))) if classes is None else list(classes)
    c, h, w = images.shape[1:]
    rows, shown = [], []
    for k in classes:
        picked = images[labels == k][:per_class]
        row = torch.full((per_class, c, h, w), 255, dtype=torch.uint8)  # blank (white) where a class has fewer
        row[: len(picked)] = picked
        rows.append(row)
        shown.append(len(picked))
    grid = make_grid(torch.cat(rows).float() / 255, nrow=per_class, padding=2, pad_value=1.0)
    arr = (grid.clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).numpy())
    picture = Image.fromarray(arr).resize((grid.shape[2] * scale, grid.shape[1] * scale), Image.NEAREST)
    font = _font()
    names = [class_names[k] + ("" if n == per_class else f" ({n})") for k, n in zip(classes, shown)]
    left = 10 + max(int(font.getlength(n)) for n in names)
    top = 18 if title else 0
    canvas = Image.new("RGB", (max(left + picture.width, int(font.getlength(title)) + 8), top + picture.height),
                       "white")
    canvas.paste(picture, (left, top))
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((4, 3), title, fill="black", font=font)
    cell = (h + 2) * scale
    for i, name in enumerate(names):
        draw.text((4, top + 2 * scale + i * cell + cell // 2 - 6), name, fill="black", font=font)
    return canvas


def series_colors(n: int) -> list[tuple[float, float, float]]:
    """n distinct colours: matplotlib's tab10 up to 10, tab20 up to 20, then evenly spaced hues."""
    from matplotlib import colormaps

    if n <= 10:
        return [colormaps["tab10"](i)[:3] for i in range(n)]
    if n <= 20:
        return [colormaps["tab20"](i)[:3] for i in range(n)]
    return [colormaps["hsv"](i / n)[:3] for i in range(n)]


def _figure(width: float, height: float) -> Any:
    """A matplotlib Figure of `width` x `height` inches, not registered with pyplot."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _image(fig: Any) -> Image.Image:
    """The figure rendered (Agg) to an RGB PIL image."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", facecolor="white")
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def label_count_plot(counts: np.ndarray, class_names: Sequence[str] = (), title: str = "") -> Image.Image:
    """A dot per (node, class), its area proportional to the count, the count written beside it.
    counts: [num_nodes, num_classes]."""
    counts = np.asarray(counts)
    nodes, classes = counts.shape
    names = list(class_names) or [str(k) for k in range(classes)]
    fig = _figure(max(4.0, 1.6 + 0.55 * nodes), 1.2 + 0.38 * classes)
    ax = fig.add_subplot()
    peak = max(int(counts.max()), 1)
    ii, kk = np.nonzero(counts)
    ax.scatter(ii, kk, s=600 * counts[ii, kk] / peak, color=series_colors(1)[0], alpha=0.8)
    for i, k in zip(ii, kk):
        ax.annotate(str(int(counts[i, k])), (i, k), xytext=(0, -9), textcoords="offset points", ha="center",
                    va="top", fontsize=6, color="0.3")
    ax.set_xticks(range(nodes))
    ax.set_yticks(range(classes), names)
    ax.set_xlim(-0.6, nodes - 0.4)
    ax.set_ylim(classes - 0.5, -0.7)
    ax.set_xlabel("node (dot area ~ samples)")
    ax.set_ylabel("class")
    ax.grid(True, color="0.92")
    ax.set_axisbelow(True)
    ax.set_title(title or "samples per node and class", fontsize=10)
    return _image(fig)


def bar_chart(groups: Sequence[str], series: dict[str, Sequence[float]], title: str = "",
              y_label: str = "share") -> Image.Image:
    """Grouped vertical bars of values in [0, 1], one group per entry of `groups` (names slanted so that
    long class names do not run into each other); NaN draws no bar."""
    n = max(len(series), 1)
    fig = _figure(max(5.0, 1.5 + len(groups) * (0.18 * n + 0.25)), 3.6)
    ax = fig.add_subplot()
    width = 0.8 / n
    x = np.arange(len(groups))
    for s, ((name, values), color) in enumerate(zip(series.items(), series_colors(len(series)))):
        ax.bar(x + (s - (n - 1) / 2) * width, [0.0 if v != v else float(v) for v in values], width, label=name,
               color=color)
    ax.set_xticks(x, list(groups), rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel(y_label)
    ax.grid(True, axis="y", color="0.92")
    ax.set_axisbelow(True)
    ax.set_title(title, fontsize=10)
    if len(series) > 1:
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.28), ncols=min(len(series), 4), frameon=False)
    return _image(fig)


def confusion_plot(cm: np.ndarray, class_names: Sequence[str], title: str = "confusion matrix") -> Image.Image:
    """A confusion matrix (rows: true label, columns: predicted): each cell shaded by its share of its
    row (the normalized view: the diagonal is each class's recall) and labelled with its count; the
    title gives the accuracy."""
    cm = np.asarray(cm)
    k = len(cm)
    shares = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    accuracy = np.trace(cm) / max(cm.sum(), 1)
    fig = _figure(2.2 + 0.5 * k, 1.6 + 0.45 * k)
    ax = fig.add_subplot()
    shown = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", fontsize=7,
                    color="white" if shares[i, j] > 0.5 else "black")
    ax.set_xticks(range(k), list(class_names), rotation=40, ha="right", fontsize=8)
    ax.set_yticks(range(k), list(class_names), fontsize=8)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"{title}: accuracy {100 * accuracy:.2f}% of {int(cm.sum())}", fontsize=10)
    fig.colorbar(shown, ax=ax, label="share of the true class", shrink=0.8)
    return _image(fig)


def epoch_curves(histories: dict[str, list[dict[str, Any]]], keys: Sequence[str], title: str, x_label: str = "epoch",
                 loss_key: str = "loss") -> Image.Image:
    """Training histories ({name: [{loss_key: ..., key: ...}, ...]}, one entry per epoch or round)
    against the epoch (or `x_label`): each of `keys` (accuracies in [0, 1]; an entry without the key
    is skipped) on the left, one colour per history and one line style per key (solid, dashed,
    dotted), the loss on the right."""
    fig = _figure(9.0, 3.6)
    acc, loss = fig.subplots(1, 2)
    names = list(histories)
    colors = dict(zip(names, series_colors(len(names))))
    styles = dict(zip(keys, ("-", "--", ":", "-.")))
    for name in names:
        for key in keys:
            points = [(i + 1, float(h[key])) for i, h in enumerate(histories[name]) if h.get(key) is not None]
            if points:
                acc.plot(*zip(*points), color=colors[name], linestyle=styles.get(key, "-"),
                         marker="o" if len(points) < 20 else None, markersize=3,
                         label=f"{name.strip()} {key.replace('_', ' ')}".strip())
        history = histories[name]
        losses = [(i + 1, float(h[loss_key])) for i, h in enumerate(history) if h.get(loss_key) is not None]
        if losses:
            loss.plot(*zip(*losses), color=colors[name], label=name.strip() or "loss")
    acc.set(xlabel=x_label, ylabel="accuracy", title="accuracy")
    loss.set(xlabel=x_label, ylabel="training loss", title="loss")
    for ax in (acc, loss):
        ax.grid(True, color="0.92")
    if acc.get_legend_handles_labels()[0]:
        acc.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncols=2, frameon=False)
    if len(names) > 1:
        loss.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncols=3, frameon=False)
    fig.suptitle(title, fontsize=10)
    return _image(fig)


def line_plot(curves: dict[str, Sequence[tuple[float, float]]], title: str = "", x_label: str = "round",
              y_label: str = "test accuracy", log_y: bool = False) -> Image.Image:
    """One line per entry of `curves` ({name: [(x, y), ...]}), distinct colours, the legend below the
    axes (it never covers the data); `log_y`: a logarithmic y axis (losses spanning decades)."""
    fig = _figure(7.0, 3.6 + 0.2 * -(-len(curves) // 2))
    ax = fig.add_subplot()
    for (name, curve), color in zip(curves.items(), series_colors(len(curves))):
        if curve:
            ax.plot(*zip(*curve), color=color, label=name, marker="o" if len(curve) == 1 else None)
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.grid(True, color="0.92")
    ax.set_title(title, fontsize=10)
    if curves:
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncols=2, fontsize=7, frameon=False)
    return _image(fig)


def side_by_side(left: Image.Image, right: Image.Image, gap: int = 16) -> Image.Image:
    """Two pictures next to each other on white, tops aligned, `gap` pixels apart."""
    canvas = Image.new("RGB", (left.width + gap + right.width, max(left.height, right.height)), "white")
    canvas.paste(left, (0, 0))
    canvas.paste(right, (left.width + gap, 0))
    return canvas
