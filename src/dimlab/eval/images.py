"""Random-access uint8 image sets to score: a folder of PNG/JPEG files or an ``.npz`` of uint8 images.

Both give ``len()`` and ``batch(indices) -> uint8 (B, 3, H, W)`` so ranks can each score their own slice.
ADM / DiT style ``.npz`` sample files (``arr_0``: N x H x W x 3 uint8) written uncompressed by ``np.savez`` are
memory-mapped rather than loaded, since 50k 512-px images are ~39 GB.
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

__all__ = ["ImageFolderSource", "NpzImageSource", "open_image_source"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def _to_chw3(array: np.ndarray, where: str) -> torch.Tensor:
    """(B, H, W, C) uint8 with C in {1, 3} -> (B, 3, H, W) uint8 (grey repeated to RGB)."""
    if array.dtype != np.uint8:
        raise ValueError(f"{where}: expected uint8 images, got {array.dtype}")
    if array.ndim == 3:
        array = array[..., None]
    if array.ndim != 4 or array.shape[-1] not in (1, 3):
        raise ValueError(f"{where}: expected images shaped (N, H, W, 3) or (N, H, W), got {array.shape}")
    # Memory-mapped/read-only arrays are copied: torch tensors must own writable memory.
    tensor = torch.from_numpy(np.array(array, copy=True, order="C")).permute(0, 3, 1, 2)
    return tensor.expand(-1, 3, -1, -1).contiguous() if tensor.shape[1] == 1 else tensor


class ImageFolderSource:
    """Image files under a folder (recursively, sorted by relative path); all must share one size."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder not found: {self.root}")
        self.files = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.files:
            raise ValueError(f"{self.root} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
        self.description = str(self.root)

    def __len__(self) -> int:
        return len(self.files)

    def batch(self, indices: Sequence[int]) -> torch.Tensor:
        """uint8 (B, 3, H, W) images for ``indices``."""
        arrays = []
        for i in indices:
            with Image.open(self.files[i]) as img:
                arrays.append(np.asarray(img.convert("RGB"), dtype=np.uint8))
        sizes = {a.shape for a in arrays}
        if len(sizes) > 1:
            raise ValueError(
                f"{self.root}: images of different sizes {sorted(sizes)} (e.g. {self.files[indices[0]]})"
            )
        return _to_chw3(np.stack(arrays), str(self.root))


def _memmap_npz_member(path: Path, key: str) -> np.ndarray | None:
    """Memory-map ``key`` of an uncompressed ``.npz``; None when it is compressed (then it must be loaded)."""
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(f"{key}.npy")
        if info.compress_type != zipfile.ZIP_STORED:
            return None
    with open(path, "rb") as fh:
        fh.seek(info.header_offset)
        local = fh.read(30)
        # Local file header: name length at byte 26, extra-field length at byte 28.
        name_len = int.from_bytes(local[26:28], "little")
        extra_len = int.from_bytes(local[28:30], "little")
        fh.seek(info.header_offset + 30 + name_len + extra_len)
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
        else:
            return None
        offset = fh.tell()
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C")


class NpzImageSource:
    """uint8 images (N, H, W, 3) stored under ``key`` (default: ``arr_0`` or the file's only array)."""

    def __init__(self, path: str | Path, key: str | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"image .npz not found: {self.path}")
        with np.load(self.path, allow_pickle=False) as data:
            files = list(data.files)
        if key is None:
            if "arr_0" in files:
                key = "arr_0"
            elif len(files) == 1:
                key = files[0]
            else:
                raise ValueError(f"{self.path}: several arrays {files}; name the image array (key=...)")
        if key not in files:
            raise ValueError(f"{self.path}: no array {key!r}, found {files}")
        if "mu" in files and "sigma" in files:
            raise ValueError(f"{self.path} holds FID statistics (mu, sigma), not images: pass it as --ref")
        mapped = _memmap_npz_member(self.path, key)
        if mapped is None:
            with np.load(self.path, allow_pickle=False) as data:
                mapped = data[key]
        self.array = mapped
        self.description = f"{self.path}:{key}"
        _to_chw3(np.asarray(self.array[:1]), self.description)  # validates dtype and layout up front

    def __len__(self) -> int:
        return int(self.array.shape[0])

    def batch(self, indices: Sequence[int]) -> torch.Tensor:
        """uint8 (B, 3, H, W) images for ``indices``."""
        return _to_chw3(np.asarray(self.array[list(indices)]), self.description)


def open_image_source(path: str | Path, key: str | None = None) -> ImageFolderSource | NpzImageSource:
    """A folder of images or an ``.npz`` of uint8 images, picked by what ``path`` is."""
    p = Path(path)
    if p.is_dir():
        return ImageFolderSource(p)
    if p.suffix == ".npz":
        return NpzImageSource(p, key=key)
    raise ValueError(f"--images must be a folder of images or a .npz of uint8 images, got {p}")
