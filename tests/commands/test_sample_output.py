"""What ``dimlab sample`` shows and writes: progress with an ETA, and a padded grid whose rows are classes when
the labels are given."""

from __future__ import annotations

import re

import numpy as np
from PIL import Image

from dimlab.commands.main import main
from dimlab.sampling.images import GRID_PAD_VALUE, GRID_PADDING


def _sample(tiny_ckpt, out, *extra) -> None:
    argv = ["sample", "--ckpt", str(tiny_ckpt), "--out", str(out), "--steps", "3", "--device", "cpu"]
    assert main([*argv, "--batch-size", "2", *extra]) == 0


def test_progress_counts_images_and_shows_the_time_left(tiny_ckpt, tmp_path, capsys):
    _sample(tiny_ckpt, tmp_path / "a", "--num", "5")
    shown = re.compile(
        r"sampling images .* 5/5 \d+:\d\d:\d\d \d+:\d\d:\d\d"
    )  # done/total, elapsed, time left
    assert shown.search(capsys.readouterr().out)
    _sample(tiny_ckpt, tmp_path / "b", "--num", "5", "--no-progress")
    assert "sampling images" not in capsys.readouterr().out


def test_grid_rows_are_classes_when_labels_are_given(tiny_ckpt, tmp_path):
    p = GRID_PADDING
    _sample(tiny_ckpt, tmp_path / "labelled", "--num", "5", "--class-labels", "3", "1")
    grid = np.asarray(Image.open(tmp_path / "labelled" / "grid.png"))
    assert grid.shape == (
        2 * 8 + 3 * p,
        3 * 8 + 4 * p,
    )  # labels 3 1 3 1 3: a row of three 3s, a row of two 1s
    first = np.asarray(Image.open(tmp_path / "labelled" / "000000.png"))
    third = np.asarray(Image.open(tmp_path / "labelled" / "000002.png"))
    assert np.array_equal(grid[p : p + 8, p : p + 8], first)
    assert np.array_equal(grid[p : p + 8, 2 * p + 8 : 2 * p + 16], third), (
        "image 2 (class 3) is next to image 0"
    )
    assert (grid[:p] == GRID_PAD_VALUE).all() and (grid[p + 8 : 2 * p + 8] == GRID_PAD_VALUE).all()

    _sample(tiny_ckpt, tmp_path / "random", "--num", "4")
    assert np.asarray(Image.open(tmp_path / "random" / "grid.png")).shape == (2 * 8 + 3 * p, 2 * 8 + 3 * p)
