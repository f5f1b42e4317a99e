"""Fixtures for the data tests: a small fake CIFAR-10 archive, digits shards and a tiny random VAE."""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest

FAKE_CIFAR_PER_BATCH = 6
FAKE_CIFAR_TEST = 10


def _add_pickle(archive: tarfile.TarFile, name: str, payload: dict) -> None:
    data = pickle.dumps(payload)
    info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


def make_fake_cifar_archive(path: Path, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Write a cifar-10-python.tar.gz lookalike (same member names, pickles and row layout).

    Returns the images as (N, 32, 32, 3) uint8 and labels per split, decoded independently of the reader.
    """
    rng = np.random.default_rng(seed)
    splits = {"train": ([], []), "test": ([], [])}
    with tarfile.open(path, "w:gz") as archive:
        names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
        for name in names:
            count = FAKE_CIFAR_TEST if name == "test_batch" else FAKE_CIFAR_PER_BATCH
            images = rng.integers(0, 256, size=(count, 32, 32, 3), dtype=np.uint8)
            labels = rng.integers(0, 10, size=count).tolist()
            rows = images.transpose(0, 3, 1, 2).reshape(count, 3072)  # R plane, G plane, B plane
            _add_pickle(archive, name, {b"data": rows, b"labels": labels, b"batch_label": name.encode()})
            split = "test" if name == "test_batch" else "train"
            splits[split][0].append(images)
            splits[split][1].append(np.asarray(labels))
        _add_pickle(archive, "batches.meta", {b"label_names": [f"class{i}".encode() for i in range(10)]})
    return {
        split: (np.concatenate(images), np.concatenate(labels)) for split, (images, labels) in splits.items()
    }


@pytest.fixture(scope="session")
def fake_cifar(tmp_path_factory) -> tuple[Path, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """(archive path, {split: (images, labels)}) of a 30 + 10 image fake CIFAR-10 archive."""
    path = tmp_path_factory.mktemp("cifar") / "cifar-10-python.tar.gz"
    return path, make_fake_cifar_archive(path)


@pytest.fixture(scope="session")
def digits_dir(digit_shards) -> Path:
    """Digits shards at 16 px with 40 samples per shard (41 train shards, 5 val shards)."""
    return digit_shards(size=16, shard_size=40, workers=2)


def tiny_vae_config() -> dict:
    """A 2-level AutoencoderKL (downsampling 2) with the SD VAE's channel layout (4 latent channels)."""
    return {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ("DownEncoderBlock2D", "DownEncoderBlock2D"),
        "up_block_types": ("UpDecoderBlock2D", "UpDecoderBlock2D"),
        "block_out_channels": (8, 16),
        "layers_per_block": 1,
        "latent_channels": 4,
        "norm_num_groups": 8,
        "sample_size": 32,
    }


@pytest.fixture(scope="session")
def tiny_vae_dir(tmp_path_factory) -> Path:
    """A randomly initialised tiny AutoencoderKL saved with ``save_pretrained``."""
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("vae") / "tiny-vae"
    AutoencoderKL(**tiny_vae_config()).save_pretrained(path)
    return path
