"""Quantise float images to uint8 the way a saved PNG does, so FID sees what a PNG-based pipeline would see.

torchmetrics' ``normalize=True`` converts with ``(x * 255).byte()``, which *truncates*; ``save_image`` (used by
U-ViT / DiM before pytorch-fid) and PIL round. Truncation shifts every pixel down by half a level on average,
which moves FID measurably, so generated images always go through :func:`to_uint8` before the feature extractor.
"""

from __future__ import annotations

import torch

__all__ = ["to_uint8"]

_RANGES = {(-1.0, 1.0), (0.0, 1.0)}


def to_uint8(images: torch.Tensor, value_range: tuple[float, float] = (-1.0, 1.0)) -> torch.Tensor:
    """Round float images in ``value_range`` (``(-1, 1)`` or ``(0, 1)``) to uint8 in [0, 255], clamping outliers.

    ``(-1, 1)``: ``((x + 1) * 127.5).round()``; ``(0, 1)``: ``(x * 255).round()``. ``torch.round`` rounds
    halves to even where torchvision's ``save_image`` (``+ 0.5`` then truncate) rounds them up; the two differ
    only on values that land exactly on a half level.
    """
    low, high = float(value_range[0]), float(value_range[1])
    if (low, high) not in _RANGES:
        raise ValueError(f"value_range must be (-1, 1) or (0, 1), got {value_range!r}")
    if not images.is_floating_point():
        raise TypeError(f"to_uint8 expects a floating-point tensor, got dtype {images.dtype}")
    x = images.float()
    scaled = (x + 1.0) * 127.5 if low == -1.0 else x * 255.0
    return scaled.round().clamp(0, 255).to(torch.uint8)
