"""Pictures made with Pillow alone: label counts per node (dot size, as in FedFTG's Figure 3)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def label_count_plot(counts: np.ndarray, class_names: Sequence[str] = (), title: str = "",
                     cell: int = 36) -> Image.Image:
    """A dot per (node, class), its area proportional to the count. counts: [num_nodes, num_classes]."""
    counts = np.asarray(counts)
    nodes, classes = counts.shape
    names = list(class_names) or [str(k) for k in range(classes)]
    font = ImageFont.load_default()
    left = 12 + max(int(font.getlength(n)) for n in names)
    top, bottom = (28 if title else 10), 40
    width, height = left + nodes * cell + 10, top + classes * cell + bottom
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
