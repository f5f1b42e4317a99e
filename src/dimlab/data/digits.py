"""scikit-learn's 8x8 handwritten digits -> upsampled single-channel PNG shards (the offline demo data set).

The 1,797 images ship inside scikit-learn, so the demo and the tests run without any download. Images are
kept single-channel (grey): the digits have no colour, and a 1-channel model is cheaper for the CPU demo.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

from dimlab.data.array_source import write_array_shards

DIGITS_LEVELS = 16  # load_digits stores intensities 0..16


def load_digits_images(size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """All digits as (1797, size, size) uint8 grey images (BICUBIC upsampled from 8x8) and int64 labels."""
    if size < 8:
        raise ValueError(f"digits: --size must be at least 8 (the source resolution), got {size}")
    digits = load_digits()
    small = np.round(digits.images * (255.0 / DIGITS_LEVELS)).astype(np.uint8)
    images = np.stack(
        [np.asarray(Image.fromarray(image).resize((size, size), Image.BICUBIC)) for image in small]
    )
    return images, digits.target.astype(np.int64)


def split_train_val(count: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic shuffled (train, val) index arrays; val gets ``round(count * val_fraction)`` items."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"digits: --val-fraction must be in (0, 1), got {val_fraction}")
    order = np.random.default_rng(seed).permutation(count)
    num_val = round(count * val_fraction)
    return order[num_val:], order[:num_val]


def write_digits_shards(
    out_dir: str | os.PathLike,
    *,
    size: int = 16,
    val_fraction: float = 0.1,
    seed: int = 0,
    shard_size: int = 200,
    workers: int = 1,
) -> dict[str, Any]:
    """Write ``train-*.tar`` / ``val-*.tar`` grey PNG shards of the digits at ``size`` x ``size``."""
    images, labels = load_digits_images(size)
    train, val = split_train_val(len(images), val_fraction, seed)
    return write_array_shards(
        out_dir,
        {"train": (images[train], labels[train]), "val": (images[val], labels[val])},
        source="sklearn.datasets.load_digits",
        source_id=f"size={size},val_fraction={val_fraction},seed={seed}",
        class_names=[str(digit) for digit in range(10)],
        image_format="png",
        shard_size=shard_size,
        workers=workers,
        description="digits shards",
    )
