"""Sample grids: padding between the images, and one row per class when the labels are known."""

from __future__ import annotations

import numpy as np

from dimlab.sampling.images import GRID_PAD_VALUE, GRID_PADDING, class_grid, image_grid


def _images(n: int, size: int = 4) -> np.ndarray:
    """``n`` uint8 (size, size, 1) images, image i filled with the value i + 1 (never the pad value)."""
    return np.stack([np.full((size, size, 1), i + 1, dtype=np.uint8) for i in range(n)])


def _cell(grid: np.ndarray, row: int, col: int, size: int = 4, pad: int = GRID_PADDING) -> np.ndarray:
    top, left = pad + row * (size + pad), pad + col * (size + pad)
    return grid[top : top + size, left : left + size]


def test_image_grid_pads_between_and_around_the_images():
    grid = image_grid(_images(5), nrow=3)
    p = GRID_PADDING
    assert p >= 1
    assert grid.shape == (2 * 4 + 3 * p, 3 * 4 + 4 * p, 1)
    assert (grid[:p] == GRID_PAD_VALUE).all() and (grid[:, :p] == GRID_PAD_VALUE).all()
    assert (grid[p + 4 : 2 * p + 4] == GRID_PAD_VALUE).all(), "a padding line between the rows"
    assert [int(_cell(grid, r, c)[0, 0, 0]) for r, c in [(0, 0), (0, 2), (1, 0), (1, 1)]] == [1, 3, 4, 5]
    assert (_cell(grid, 1, 2) == GRID_PAD_VALUE).all(), "the missing sixth image is left blank"
    assert image_grid(_images(2), nrow=2, padding=0).shape == (4, 8, 1)


def test_class_grid_puts_each_class_on_its_own_row():
    labels = [7, 2, 7, 2, 7, 5]
    grid = class_grid(_images(6), labels)
    p = GRID_PADDING
    assert grid.shape == (
        3 * 4 + 4 * p,
        3 * 4 + 4 * p,
        1,
    )  # classes 7, 2, 5 (first-seen order); 3 per row at most
    rows = [[int(_cell(grid, r, c)[0, 0, 0]) for c in range(3)] for r in range(3)]
    assert rows == [[1, 3, 5], [2, 4, GRID_PAD_VALUE], [6, GRID_PAD_VALUE, GRID_PAD_VALUE]]
