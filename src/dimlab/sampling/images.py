"""Generated images on disk: uint8 conversion, grids, PNG files and ``.npz`` arrays (shared by every tool)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dimlab.data.transforms import to_uint8

#: Pixels between the images of a grid (and around it), as torchvision's ``make_grid``.
GRID_PADDING = 2
#: The colour of the padding and of empty cells (white: visible between dark and light images alike).
GRID_PAD_VALUE = 255

__all__ = [
    "GRID_PAD_VALUE",
    "GRID_PADDING",
    "class_grid",
    "image_grid",
    "save_grid",
    "save_npz",
    "save_png",
    "save_pngs",
    "to_uint8_hwc",
]


def to_uint8_hwc(images: torch.Tensor) -> np.ndarray:
    """[-1, 1] (B, C, H, W) -> uint8 (B, H, W, C), rounded like a saved PNG."""
    return to_uint8(images).permute(0, 2, 3, 1).cpu().numpy()


def image_grid(
    images: np.ndarray, nrow: int, padding: int = GRID_PADDING, pad_value: int = GRID_PAD_VALUE
) -> np.ndarray:
    """Tile uint8 (B, H, W, C) images into one array, ``nrow`` images per row, in index order.

    ``padding`` pixels of ``pad_value`` separate the images and frame the grid (torchvision's ``make_grid``
    layout); cells without an image stay ``pad_value``.
    """
    cells = list(images)
    return _tile(
        [cells[i : i + nrow] for i in range(0, len(cells), nrow)], images.shape[1:], padding, pad_value
    )


def class_grid(
    images: np.ndarray, labels: Sequence[int], padding: int = GRID_PADDING, pad_value: int = GRID_PAD_VALUE
) -> np.ndarray:
    """Like :func:`image_grid`, but one row per class: the classes in the order they first appear in ``labels``,
    each row that class's images in index order (rows of rarer classes end in blank cells)."""
    if len(labels) != len(images):
        raise ValueError(f"class_grid: {len(labels)} labels for {len(images)} images")
    rows: dict[int, list[np.ndarray]] = {}
    for image, label in zip(images, labels, strict=True):
        rows.setdefault(int(label), []).append(image)
    return _tile(list(rows.values()), images.shape[1:], padding, pad_value)


def _tile(rows: list[list[np.ndarray]], cell: tuple[int, ...], padding: int, pad_value: int) -> np.ndarray:
    (h, w, c), ncol = cell, max(len(row) for row in rows)
    grid = np.full(
        (len(rows) * (h + padding) + padding, ncol * (w + padding) + padding, c), pad_value, dtype=np.uint8
    )
    for r, row in enumerate(rows):
        for col, image in enumerate(row):
            top, left = padding + r * (h + padding), padding + col * (w + padding)
            grid[top : top + h, left : left + w] = image
    return grid


def save_png(image: np.ndarray, path: str | Path) -> None:
    """Write one uint8 (H, W, C) image (C = 1 grey, or 3) as a PNG."""
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(path)


def save_grid(images: np.ndarray, path: str | Path, nrow: int, labels: Sequence[int] | None = None) -> None:
    """Tile uint8 (B, H, W, C) images into one padded PNG: ``nrow`` images per row, or, given ``labels``, one row
    per class (:func:`class_grid`)."""
    save_png(image_grid(images, nrow) if labels is None else class_grid(images, labels), path)


def save_pngs(images: np.ndarray, folder: str | Path, indices: Iterable[int]) -> None:
    """Write uint8 (B, H, W, C) images as ``folder/<index:06d>.png``, one index per image."""
    for i, image in zip(indices, images, strict=True):
        save_png(image, Path(folder) / f"{int(i):06d}.png")


def save_npz(images: np.ndarray, path: str | Path) -> None:
    """Write uint8 (N, H, W, C) images as an ``.npz`` under ``arr_0`` (the ADM / DiT sample-file layout)."""
    np.savez(path, arr_0=images)
