"""Generated images on disk: uint8 conversion, grids, PNG files and ``.npz`` arrays (shared by every tool)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dimlab.data.transforms import to_uint8

__all__ = ["image_grid", "save_grid", "save_npz", "save_png", "save_pngs", "to_uint8_hwc"]


def to_uint8_hwc(images: torch.Tensor) -> np.ndarray:
    """[-1, 1] (B, C, H, W) -> uint8 (B, H, W, C), rounded like a saved PNG."""
    return to_uint8(images).permute(0, 2, 3, 1).cpu().numpy()


def image_grid(images: np.ndarray, nrow: int) -> np.ndarray:
    """Tile uint8 (B, H, W, C) images into one (rows * H, nrow * W, C) array, ``nrow`` images per row."""
    b, h, w, c = images.shape
    rows = math.ceil(b / nrow)
    grid = np.zeros((rows * h, nrow * w, c), dtype=np.uint8)
    for i, img in enumerate(images):
        r, col = divmod(i, nrow)
        grid[r * h : (r + 1) * h, col * w : (col + 1) * w] = img
    return grid


def save_png(image: np.ndarray, path: str | Path) -> None:
    """Write one uint8 (H, W, C) image (C = 1 grey, or 3) as a PNG."""
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(path)


def save_grid(images: np.ndarray, path: str | Path, nrow: int) -> None:
    """Tile uint8 (B, H, W, C) images into one PNG, ``nrow`` images per row."""
    save_png(image_grid(images, nrow), path)


def save_pngs(images: np.ndarray, folder: str | Path, indices: Iterable[int]) -> None:
    """Write uint8 (B, H, W, C) images as ``folder/<index:06d>.png``, one index per image."""
    for i, image in zip(indices, images, strict=True):
        save_png(image, Path(folder) / f"{int(i):06d}.png")


def save_npz(images: np.ndarray, path: str | Path) -> None:
    """Write uint8 (N, H, W, C) images as an ``.npz`` under ``arr_0`` (the ADM / DiT sample-file layout)."""
    np.savez(path, arr_0=images)
