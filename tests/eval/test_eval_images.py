"""Stored image sets to score: PNG folders and ADM-style .npz files (memory-mapped when uncompressed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from dimlab.eval.images import ImageFolderSource, NpzImageSource, open_image_source


@pytest.fixture
def nhwc(numpy_rng):
    return numpy_rng.integers(0, 256, size=(7, 6, 5, 3), dtype=np.uint8)


def test_npz_uncompressed_is_memory_mapped(tmp_path, nhwc):
    path = tmp_path / "samples.npz"
    np.savez(path, nhwc, np.arange(7))  # arr_0 images (ADM layout), arr_1 labels
    source = open_image_source(path)
    assert isinstance(source, NpzImageSource) and isinstance(source.array, np.memmap)
    assert len(source) == 7
    batch = source.batch([4, 1, 6])
    assert batch.dtype == torch.uint8 and batch.shape == (3, 3, 6, 5)
    assert torch.equal(batch, torch.from_numpy(nhwc[[4, 1, 6]]).permute(0, 3, 1, 2))


def test_npz_compressed_and_named_key(tmp_path, nhwc):
    path = tmp_path / "samples.npz"
    np.savez_compressed(path, images=nhwc, labels=np.arange(7))
    with pytest.raises(ValueError, match="several arrays"):
        NpzImageSource(path)
    source = NpzImageSource(path, key="images")
    assert torch.equal(source.batch(range(7)), torch.from_numpy(nhwc).permute(0, 3, 1, 2))


def test_grey_npz_is_repeated_to_rgb(tmp_path, nhwc):
    path = tmp_path / "grey.npz"
    np.savez(path, nhwc[..., 0])
    batch = NpzImageSource(path).batch([0, 1])
    assert batch.shape == (2, 3, 6, 5)
    assert torch.equal(batch[:, 0], batch[:, 2]) and torch.equal(
        batch[:, 0], torch.from_numpy(nhwc[:2, ..., 0])
    )


def test_npz_errors(tmp_path, nhwc):
    stats = tmp_path / "stats.npz"
    np.savez(stats, mu=np.zeros(3), sigma=np.eye(3))
    with pytest.raises(ValueError, match="several arrays"):
        NpzImageSource(stats)
    with pytest.raises(ValueError, match="FID statistics"):
        NpzImageSource(stats, key="mu")
    floats = tmp_path / "floats.npz"
    np.savez(floats, nhwc.astype(np.float32))
    with pytest.raises(ValueError, match="expected uint8"):
        NpzImageSource(floats)
    with pytest.raises(ValueError, match="folder of images or a .npz"):
        open_image_source(tmp_path / "x.tar")


def test_png_folder_sorted_and_exact(tmp_path, nhwc):
    for i in (2, 0, 1):
        sub = tmp_path / "imgs" / ("b" if i == 2 else "a")
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(nhwc[i]).save(sub / f"{i:03d}.png")
    (tmp_path / "imgs" / "notes.txt").write_text("ignored")
    source = open_image_source(tmp_path / "imgs")
    assert isinstance(source, ImageFolderSource) and len(source) == 3
    assert torch.equal(source.batch([0, 1, 2]), torch.from_numpy(nhwc[:3]).permute(0, 3, 1, 2))


def test_folder_errors(tmp_path, nhwc):
    with pytest.raises(FileNotFoundError):
        ImageFolderSource(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image files"):
        ImageFolderSource(tmp_path / "empty")
    (tmp_path / "mixed").mkdir()
    Image.fromarray(nhwc[0]).save(tmp_path / "mixed" / "a.png")
    Image.fromarray(nhwc[1][:4]).save(tmp_path / "mixed" / "b.png")
    with pytest.raises(ValueError, match="different sizes"):
        ImageFolderSource(tmp_path / "mixed").batch([0, 1])
