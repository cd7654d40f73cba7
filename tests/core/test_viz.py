"""Tests of fedinv.viz: charts by matplotlib (no pyplot state), image grids."""

import sys

import numpy as np
import torch

from fedinv.viz import bar_chart, class_grid, confusion_plot, epoch_curves, label_count_plot, line_plot, series_colors


def test_every_series_gets_its_own_colour():
    for n in (1, 6, 12, 25):
        colors = series_colors(n)
        assert len(colors) == n and len(set(colors)) == n, n


def test_charts_render_without_touching_pyplot():
    curve = [(1, 0.5), (2, 0.6), (3, 0.65)]
    pictures = [
        line_plot({f"method {i}": curve for i in range(12)}, title="test accuracy per round"),
        bar_chart(["T-shirt/top", "Trouser", "Ankle boot"], {"a": [0.1, float("nan"), 0.9], "b": [0.5, 0.5, 0.5]}),
        confusion_plot(np.array([[8, 2], [1, 9]]), ["cat", "dog"]),
        epoch_curves({"node 0 ": [{"loss": 1.0, "accuracy": 0.5}, {"loss": 0.5, "accuracy": 0.7,
                                                                   "test_accuracy": 0.6}]},
                     ("accuracy", "test_accuracy"), "teachers"),
        label_count_plot(np.array([[10, 0, 5], [0, 7, 1]]), ["a", "b", "c"]),
    ]
    for picture in pictures:
        assert picture.mode == "RGB" and picture.width > 200 and picture.height > 150
        assert len(np.unique(np.asarray(picture).reshape(-1, 3), axis=0)) > 10, "something was drawn"
    assert "matplotlib.pyplot" not in sys.modules  # no global backend, no figure registry


def test_a_more_crowded_legend_takes_more_room_below_the_axes():
    curve = [(1, 0.5), (2, 0.6)]
    assert line_plot({f"m{i}": curve for i in range(12)}).height > line_plot({"m": curve}).height


def test_class_grid_leaves_missing_slots_white_and_says_how_many_a_class_has():
    images = torch.zeros(3, 1, 4, 4, dtype=torch.uint8)  # black images: class 0 has 2, class 1 has 1
    labels = torch.tensor([0, 0, 1])
    full = class_grid(images, labels, ["zero", "one"], per_class=2, scale=1)
    arr = np.asarray(full)
    # the last slot of row 1 (class "one") is blank: white, not a black image
    cell = 4 + 2
    row1, slot1 = 2 + cell, full.width - 2 - 4
    assert (arr[row1:row1 + 4, slot1:slot1 + 4] == 255).all()
    assert (arr[2:6, full.width - 2 - 4 - cell:full.width - 2 - cell] == 0).all()  # a real (black) image
    titled = class_grid(images, labels, ["zero", "one"], per_class=2, scale=1, title="store.h5: 3 images")
    assert titled.height > full.height
