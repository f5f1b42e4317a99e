"""CIFAR-10 from the standard ``cifar-10-python.tar.gz`` archive -> lossless PNG shards (train, test)."""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import tarfile
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from dimlab.data.array_source import write_array_shards
from dimlab.files import atomic_write

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
TRAIN_MEMBERS = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_MEMBER = "test_batch"


def file_md5(path: str | os.PathLike) -> str:
    """Hex MD5 of a file (the checksum the CIFAR authors publish)."""
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _load_batch(archive: tarfile.TarFile, members: dict[str, tarfile.TarInfo], name: str, path: Path):
    if name not in members:
        raise ValueError(f"{path}: member {name!r} not found; expected a cifar-10-python.tar.gz archive")
    batch = pickle.load(archive.extractfile(members[name]), encoding="bytes")
    try:
        data, labels = (
            np.asarray(batch[b"data"], dtype=np.uint8),
            np.asarray(batch[b"labels"], dtype=np.int64),
        )
    except KeyError as exc:
        raise ValueError(f"{path}: {name} lacks key {exc}; expected b'data' and b'labels'") from exc
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
        raise ValueError(
            f"{path}: {name} has data {data.shape} and {len(labels)} labels; expected (N, 3072), N"
        )
    # rows hold the R, G and B planes of a 32x32 image one after another
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def read_cifar10_archive(
    path: str | os.PathLike,
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], list[str]]:
    """Read the pickled batches of a CIFAR-10 python archive: ``({split: (N,32,32,3) uint8, labels}, names)``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: CIFAR-10 archive not found (expected cifar-10-python.tar.gz)")
    try:
        with tarfile.open(path, "r:*") as archive:
            members = {Path(info.name).name: info for info in archive.getmembers() if info.isfile()}
            train = [_load_batch(archive, members, name, path) for name in TRAIN_MEMBERS]
            test = _load_batch(archive, members, TEST_MEMBER, path)
            class_names = CIFAR10_CLASSES
            if "batches.meta" in members:
                meta = pickle.load(archive.extractfile(members["batches.meta"]), encoding="bytes")
                class_names = [name.decode() for name in meta.get(b"label_names", [])] or CIFAR10_CLASSES
    except (tarfile.TarError, EOFError) as exc:
        raise ValueError(f"{path}: not a readable tar archive ({exc})") from exc
    splits = {
        "train": (
            np.concatenate([images for images, _ in train]),
            np.concatenate([labels for _, labels in train]),
        ),
        "test": test,
    }
    return splits, class_names


def download_cifar10(directory: str | os.PathLike) -> Path:
    """Download the archive into ``directory`` (kept for reuse) and verify its published MD5."""
    target = Path(directory) / "cifar-10-python.tar.gz"
    if target.is_file() and file_md5(target) == CIFAR10_MD5:
        return target
    with atomic_write(target, "wb") as partial:
        with urllib.request.urlopen(CIFAR10_URL) as response:
            shutil.copyfileobj(response, partial)
        partial.flush()
        if (checksum := file_md5(partial.name)) != CIFAR10_MD5:
            raise ValueError(f"{CIFAR10_URL}: downloaded file has MD5 {checksum}, expected {CIFAR10_MD5}")
    return target


def write_cifar10_shards(
    out_dir: str | os.PathLike,
    archive: str | os.PathLike | None = None,
    *,
    shard_size: int = 1000,
    workers: int = 1,
) -> dict[str, Any]:
    """Write ``train-*.tar`` (50k) and ``test-*.tar`` (10k) PNG shards; downloads the archive when None."""
    archive = Path(archive) if archive is not None else download_cifar10(Path(out_dir) / ".download")
    splits, class_names = read_cifar10_archive(archive)
    return write_array_shards(
        out_dir,
        splits,
        source=f"cifar10:{archive.name}",
        source_id=file_md5(archive),
        class_names=class_names,
        image_format="png",
        shard_size=shard_size,
        workers=workers,
        description="cifar10 shards",
    )
