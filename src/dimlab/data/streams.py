"""webdataset pipelines that run inside DataLoader workers: sample decoding, the resampled training stream,
the split validation stream, and the skipped-sample counter shared by all workers.
"""

from __future__ import annotations

import ast
import functools
import itertools
import logging
import math
import multiprocessing
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info

from dimlab.data.tar_reader import tar_samples
from dimlab.data.transforms import decode_image

log = logging.getLogger("dimlab.data")

IMAGE_MEMBERS = ("png", "jpg", "jpeg")


class LabelOutOfRange(ValueError):
    """A sample's class label is outside [0, num_classes): a data set / config mismatch, never skipped."""


class SkippedSampleCounter:
    """webdataset ``handler=`` that logs a bad sample or tar member (shard and key), counts it, and continues.

    The count lives in shared memory so the DataModule can read the total over all worker processes.
    A :class:`LabelOutOfRange` is re-raised: a wrong label range means the wrong data or config.
    """

    def __init__(self) -> None:
        self._count = multiprocessing.get_context().Value("q", 0)

    def __call__(self, exn: BaseException) -> bool:
        if isinstance(exn, LabelOutOfRange):
            raise exn
        with self._count.get_lock():
            self._count.value += 1
        log.warning("skipping bad sample: %s", " | ".join(str(arg) for arg in exn.args) or repr(exn))
        return True

    @property
    def count(self) -> int:
        """Samples / tar members skipped so far, over all workers."""
        return int(self._count.value)

    def __getstate__(self) -> dict[str, Any]:
        return _share_or_snapshot(self, {"_count": self.count})

    def __setstate__(self, state: dict[str, Any]) -> None:
        _restore(self, state)


class SharedEpochStart:
    """Epoch and number of already-consumed batches, written by the main process before each epoch and read by
    persistent workers when they restart their stream (shared memory, since workers hold dataset copies)."""

    def __init__(self) -> None:
        context = multiprocessing.get_context()
        self._epoch = context.Value("q", 0)
        self._skip = context.Value("q", 0)

    def set(self, epoch: int, skip_batches: int) -> None:
        """Set the epoch to stream and how many of its batches were already consumed."""
        self._epoch.value, self._skip.value = epoch, skip_batches

    def get(self) -> tuple[int, int]:
        """(epoch, consumed batches)."""
        return int(self._epoch.value), int(self._skip.value)

    def __getstate__(self) -> dict[str, Any]:
        epoch, skip = self.get()
        return _share_or_snapshot(self, {"_epoch": epoch, "_skip": skip})

    def __setstate__(self, state: dict[str, Any]) -> None:
        _restore(self, state)


def _share_or_snapshot(owner: Any, values: dict[str, int]) -> dict[str, Any]:
    """Pickle state: the shared Values themselves when starting a worker process (so it shares them), plain
    numbers otherwise (deepcopy, ddp_spawn), because shared Values may only be passed to child processes."""
    if multiprocessing.context.get_spawning_popen() is not None:
        return dict(owner.__dict__)
    return {"__snapshot__": values}


def _restore(owner: Any, state: dict[str, Any]) -> None:
    if "__snapshot__" not in state:
        owner.__dict__.update(state)
        return
    owner.__init__()
    for name, value in state["__snapshot__"].items():
        getattr(owner, name).value = value


@dataclass(frozen=True)
class SampleDecoder:
    """Turns a raw webdataset sample into ``{"x": array, "y": int}`` for one data kind.

    images / pixels: ``x`` is (C, H, W) uint8 (flipped when ``sample["__flip__"]``); latents: ``x`` is the
    (2C, h, w) float16 moments of the image or of its flip.
    """

    kind: str
    resolution: int
    channels: int
    num_classes: int
    moments_shape: tuple[int, ...] | None = None

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        key, url = sample.get("__key__"), sample.get("__url__")
        label = self._label(sample, key, url)
        flip = bool(sample.get("__flip__", False))
        try:
            x = self._latents(sample, flip) if self.kind == "latents" else self._image(sample, flip)
        except Exception as exc:
            raise ValueError(f"shard {url} key {key}: {type(exc).__name__}: {exc}") from exc
        return {"x": x, "y": label}

    def _label(self, sample: dict[str, Any], key: str, url: str) -> int:
        if "cls" not in sample:
            raise ValueError(f"shard {url} key {key}: no 'cls' member")
        label = int(sample["cls"])
        if not 0 <= label < self.num_classes:
            raise LabelOutOfRange(
                f"shard {url} key {key}: label {label} outside [0, {self.num_classes}); check num_classes"
            )
        return label

    def _image(self, sample: dict[str, Any], flip: bool) -> np.ndarray:
        member = next((name for name in IMAGE_MEMBERS if name in sample), None)
        if member is None:
            raise ValueError(f"no image member (expected one of {IMAGE_MEMBERS})")
        try:
            image = decode_image(sample[member], self.channels)
        except ValueError as exc:
            raise ValueError(f"{member}: {exc}") from exc
        expected = (self.resolution, self.resolution, self.channels)
        if image.shape != expected:
            raise ValueError(f"image is {image.shape}, expected {expected} (H, W, C)")
        if flip:
            image = image[:, ::-1]
        # (C, H, W) per sample: transposing one small image is cache-friendly, a whole batch is not
        return np.ascontiguousarray(image.transpose(2, 0, 1))

    def _latents(self, sample: dict[str, Any], flip: bool) -> np.ndarray:
        member = "moments_flip.npy" if flip else "moments.npy"
        if member not in sample:
            raise ValueError(f"no {member!r} member")
        moments = load_npy(sample[member])
        if self.moments_shape is not None and tuple(moments.shape) != self.moments_shape:
            raise ValueError(f"moments are {moments.shape}, expected {self.moments_shape}")
        return moments


@functools.lru_cache(maxsize=64)
def _npy_layout(header: str) -> tuple[np.dtype, tuple[int, ...], bool]:
    fields = ast.literal_eval(header)
    return np.dtype(fields["descr"]), tuple(fields["shape"]), bool(fields["fortran_order"])


def load_npy(data: bytes) -> np.ndarray:
    """Read .npy bytes without copying; ``np.load`` re-parses the header with ``ast`` for every array, which
    costs more than the rest of a latent sample, so headers (identical across a data set) are cached."""
    if data[:6] != b"\x93NUMPY":
        raise ValueError("not a .npy array (bad magic)")
    size_bytes = 2 if data[6] == 1 else 4
    header_length = int.from_bytes(data[8 : 8 + size_bytes], "little")
    offset = 8 + size_bytes + header_length
    dtype, shape, fortran = _npy_layout(data[8 + size_bytes : offset].decode("latin1"))
    if dtype.hasobject:
        raise ValueError("object arrays are not allowed in shards")
    return np.frombuffer(data, dtype=dtype, count=int(np.prod(shape)), offset=offset).reshape(
        shape, order="F" if fortran else "C"
    )


def collate(samples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack decoded samples into ``{"x": float32, "y": int64}``; uint8 (C, H, W) images are mapped to [-1, 1]."""
    stacked = torch.from_numpy(np.stack([sample["x"] for sample in samples]))
    x = stacked.to(torch.float32).div_(127.5).sub_(1.0) if stacked.dtype == torch.uint8 else stacked.float()
    return {"x": x, "y": torch.tensor([sample["y"] for sample in samples], dtype=torch.long)}


def worker_id_and_count() -> tuple[int, int]:
    """(worker id, number of workers) of the current DataLoader worker; (0, 1) in the main process."""
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


def batches_already_consumed(global_batches: int, worker: int, num_workers: int) -> int:
    """How many of ``global_batches`` came from ``worker``: an in-order DataLoader takes batch i from worker
    ``i % num_workers``, so that is the count of i < global_batches with i % num_workers == worker."""
    return max(0, math.ceil((global_batches - worker) / num_workers))


def stream_seed(seed: int, epoch: int, rank: int, worker: int, purpose: int) -> int:
    """Independent, reproducible 64-bit seed per (seed, epoch, rank, worker, purpose)."""
    return int(np.random.SeedSequence([seed, epoch, rank, worker, purpose]).generate_state(1, np.uint64)[0])


class TrainStream(IterableDataset):
    """Infinite resampled shard stream cut to ``batches_per_worker`` batches per worker and epoch.

    Every (seed, epoch, rank, worker) draws shards with replacement from all shards with its own seeded RNG,
    shuffles samples in a buffer with another, and draws flips with a third, so the stream of an epoch is a
    pure function of those four numbers (worker = the stream index below). Resuming after ``k`` consumed
    batches regenerates the epoch's streams, lets worker process ``p`` play stream ``(p + k) % workers`` so the
    in-order DataLoader continues at global batch ``k``, and drops each stream's consumed batches before
    decoding (see :func:`batches_already_consumed`).
    """

    def __init__(
        self,
        urls: list[str],
        decoder: SampleDecoder,
        *,
        batch_size: int,
        batches_per_worker: int,
        shuffle_buffer: int,
        flip: bool,
        seed: int,
        rank: int,
        start: SharedEpochStart,
        handler: SkippedSampleCounter,
    ) -> None:
        super().__init__()
        self.urls, self.decoder, self.batch_size = urls, decoder, batch_size
        self.batches_per_worker, self.shuffle_buffer, self.flip = batches_per_worker, shuffle_buffer, flip
        self.seed, self.rank, self.start, self.handler = seed, rank, start, handler

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        epoch, consumed = self.start.get()
        worker, num_workers = worker_id_and_count()
        # A fresh DataLoader asks worker 0 first, but global batch `consumed` belongs to stream
        # `consumed % num_workers`: rotate which stream each worker process plays.
        stream = (worker + consumed) % num_workers
        skip = min(batches_already_consumed(consumed, stream, num_workers), self.batches_per_worker)
        seeds = [stream_seed(self.seed, epoch, self.rank, stream, purpose) for purpose in range(3)]
        flip_rng = random.Random(seeds[2])

        def assign_flip(sample: dict[str, Any]) -> dict[str, Any]:
            sample["__flip__"] = self.flip and flip_rng.random() < 0.5
            return sample

        pipeline = wds.DataPipeline(
            wds.ResampledShards(self.urls, seed=seeds[0], worker_seed=lambda: 0, deterministic=True),
            tar_samples(self.handler),
            wds.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer, rng=random.Random(seeds[1])),
            wds.map(assign_flip),
            # resume: drop what earlier batches consumed, before the (expensive) decoding
            lambda samples: itertools.islice(samples, skip * self.batch_size, None),
            wds.map(self.decoder, handler=self.handler),
            wds.batched(self.batch_size, collation_fn=collate, partial=False),
            lambda batches: itertools.islice(batches, self.batches_per_worker - skip),
        )
        return iter(pipeline)


class ValidationStream(IterableDataset):
    """Each shard read once: shards split across ranks (``shards[rank::world]``), then across workers."""

    def __init__(
        self,
        urls: list[str],
        decoder: SampleDecoder,
        *,
        batch_size: int,
        rank: int,
        world_size: int,
        handler: SkippedSampleCounter,
    ) -> None:
        super().__init__()
        self.urls, self.decoder, self.batch_size = urls, decoder, batch_size
        self.rank, self.world_size, self.handler = rank, world_size, handler

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        worker, num_workers = worker_id_and_count()
        mine = self.urls[self.rank :: self.world_size][worker::num_workers]
        if not mine:  # more ranks x workers than shards: this worker has nothing to read
            return iter(())
        pipeline = wds.DataPipeline(
            wds.SimpleShardList(mine),
            tar_samples(self.handler),
            wds.map(self.decoder, handler=self.handler),
            wds.batched(self.batch_size, collation_fn=collate, partial=True),
        )
        return iter(pipeline)
