"""Image transforms and pixel conventions: ADM centre crop, encode/decode, uint8 <-> [-1, 1] scaling.

:func:`uint8_to_signed` is how the loaders feed images to the models; :func:`to_uint8` is the way back, for every
image dimlab writes or scores. It rounds like a saved PNG: torchmetrics' ``normalize=True`` converts with
``(x * 255).byte()``, which *truncates*, while ``save_image`` (used by U-ViT / DiM before pytorch-fid) and PIL
round; truncation shifts every pixel down by half a level on average, which moves FID measurably.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

#: Shard member extension for each on-disk image format.
IMAGE_EXTENSIONS = {"jpeg": "jpg", "png": "png"}


def adm_center_crop(image: Image.Image, resolution: int) -> Image.Image:
    """Crop ``image`` to ``resolution`` x ``resolution`` the way ADM / U-ViT / DiM prepare ImageNet.

    BOX-halve while the short side is at least ``2 * resolution`` (cheap anti-aliasing), then BICUBIC-resize
    so the short side equals ``resolution``, then take the centre crop. torchvision's Resize+CenterCrop is
    not used because it resizes in one step, which gives different pixels than the published recipe.
    """
    if resolution <= 0:
        raise ValueError(f"adm_center_crop: resolution must be positive, got {resolution}")
    while min(image.size) >= 2 * resolution:
        image = image.resize(tuple(side // 2 for side in image.size), resample=Image.BOX)
    scale = resolution / min(image.size)
    image = image.resize(tuple(round(side * scale) for side in image.size), resample=Image.BICUBIC)
    left = (image.size[0] - resolution) // 2
    top = (image.size[1] - resolution) // 2
    return image.crop((left, top, left + resolution, top + resolution))


def encode_image(pixels: np.ndarray | Image.Image, image_format: str, quality: int = 95) -> bytes:
    """Encode an (H, W) / (H, W, C) uint8 array or PIL image as PNG (lossless) or JPEG bytes."""
    image = pixels if isinstance(pixels, Image.Image) else Image.fromarray(np.ascontiguousarray(pixels))
    buffer = io.BytesIO()
    if image_format == "png":
        image.save(buffer, format="PNG", compress_level=6)
    elif image_format == "jpeg":
        image.save(buffer, format="JPEG", quality=quality)
    else:
        raise ValueError(f"encode_image: format must be 'png' or 'jpeg', got {image_format!r}")
    return buffer.getvalue()


def decode_image(data: bytes, channels: int) -> np.ndarray:
    """Decode PNG/JPEG bytes to an (H, W, channels) uint8 array; ``channels`` is 1 (grey) or 3 (RGB)."""
    if channels not in (1, 3):
        raise ValueError(f"decode_image: channels must be 1 or 3, got {channels}")
    try:
        opened = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        # PIL's own message names the in-memory buffer (<_io.BytesIO object at 0x...>), which tells nobody anything
        raise ValueError(
            f"not an image PIL can read ({len(data)} bytes, starting {bytes(data[:8])!r})"
        ) from None
    with opened as image:
        image = image.convert("L" if channels == 1 else "RGB")
        array = np.asarray(image)
    return array[:, :, None] if channels == 1 else array


def uint8_to_signed(images: torch.Tensor) -> torch.Tensor:
    """Map uint8 images in [0, 255] to float32 in [-1, 1] (the diffusion models' pixel range)."""
    return images.to(torch.float32).div_(127.5).sub_(1.0)


_VALUE_RANGES = {(-1.0, 1.0), (0.0, 1.0)}


def to_uint8(images: torch.Tensor, value_range: tuple[float, float] = (-1.0, 1.0)) -> torch.Tensor:
    """Round float images in ``value_range`` (``(-1, 1)`` or ``(0, 1)``) to uint8 in [0, 255], clamping outliers.

    ``(-1, 1)``: ``((x + 1) * 127.5).round()``; ``(0, 1)``: ``(x * 255).round()``. ``torch.round`` rounds
    halves to even where torchvision's ``save_image`` (``+ 0.5`` then truncate) rounds them up; the two differ
    only on values that land exactly on a half level.
    """
    low, high = float(value_range[0]), float(value_range[1])
    if (low, high) not in _VALUE_RANGES:
        raise ValueError(f"value_range must be (-1, 1) or (0, 1), got {value_range!r}")
    if not images.is_floating_point():
        raise TypeError(f"to_uint8 expects a floating-point tensor, got dtype {images.dtype}")
    x = images.float()
    scaled = (x + 1.0) * 127.5 if low == -1.0 else x * 255.0
    return scaled.round().clamp(0, 255).to(torch.uint8)
