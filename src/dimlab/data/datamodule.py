"""``ShardDataModule``: WebDataset shards -> training / validation batches, with exact mid-epoch resume.

Training reads an infinite resampled stream (see :class:`~dimlab.data.streams.TrainStream`) cut into a fixed
number of batches per epoch; validation reads every shard once, split across ranks and workers. Batches are
``{"x": float32, "y": int64}``: images in [-1, 1] (B, C, H, W) for ``pixels`` / ``images``, VAE posterior
moments (B, 2C, h, w) for ``latents`` (the LightningModule samples the latents from them).

Resume guarantee: ``state_dict()`` holds the epoch and the number of training batches handed to the trainer
in it; after ``load_state_dict()`` the next epoch iteration yields exactly the batches the interrupted run
would have yielded next, provided seed, shards, batch size, world size, num_workers and samples_per_epoch
are unchanged, the trainer does not cut epochs short (``limit_train_batches``), and no sample among the
already-consumed part of the epoch was skipped as corrupt (a skip there shifts the batch boundaries).
That includes checkpoints written at the end of an epoch (see :class:`ResumableTrainLoader`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import lightning as L
import torch
import webdataset as wds

from dimlab.data.shards import ShardSet, rank_and_world_size, resolve_shards
from dimlab.data.streams import (
    SampleDecoder,
    SharedEpochStart,
    SkippedSampleCounter,
    TrainStream,
    ValidationStream,
)
from dimlab.data.workers import ignore_main_process_signals, worker_context

log = logging.getLogger("dimlab.data")

DataKind = Literal["pixels", "images", "latents"]
LATENT_DOWNSAMPLE = 8  # SD VAE: 256 px images -> 32 x 32 latents

#: What defines the training stream besides the shards, as stored in the state dict -> how a warning names it.
STREAM_SETTINGS = {
    "seed": "data.seed={}",
    "batch_size": "data.batch_size={}",
    "num_workers": "data.num_workers={}",
    "samples_per_epoch": "data.samples_per_epoch={}",
    "world_size": "a world size of {} (trainer.num_nodes x trainer.devices)",
}


@dataclass
class StreamPosition:
    """Where the training stream stands: the epoch being read and the batches already handed out in it."""

    epoch: int = 0
    batches: int = 0
    started: bool = False  # an epoch was started since construction / the last load_state_dict


class ResumableTrainLoader:
    """Iterable over one epoch of training batches per ``iter()``, counting batches for exact resume.

    Every new iteration starts the next epoch, except the first one after construction or after
    ``load_state_dict``, which continues the stored epoch after its consumed batches. Lightning sees
    ``len()``, so it neither prefetches past the epoch end nor asks for more batches than the epoch has.

    The one exception is a trainer that has already run a whole epoch's batches in its current epoch, which
    gets none. Lightning 2.6 gets there when it resumes an iteration-based run (``max_steps``) from a
    checkpoint written after the last batch of an epoch but before the next one began (in
    ``on_train_epoch_end``, e.g. ``ModelCheckpoint(every_n_epochs=...)``, or by ``trainer.save_checkpoint``
    after ``fit`` stopped at ``max_steps`` on an epoch boundary): it re-enters the finished epoch with its
    batch count restored and still asks for one more batch, which it would train as an extra batch of that
    epoch, so that the next epoch started one batch late, with shifted batch indices and accumulation groups.
    Handed nothing, the trainer closes that epoch, and the next iteration starts the next epoch at its first
    batch, with its own shuffle and the batch indices of an uninterrupted run.
    """

    def __init__(
        self,
        loader: wds.WebLoader,
        position: StreamPosition,
        start: SharedEpochStart,
        length: int,
        trainer_batches_in_epoch: Callable[[], int | None] = lambda: None,
    ):
        self.loader, self.position, self.start, self.length = loader, position, start, length
        self.trainer_batches_in_epoch = trainer_batches_in_epoch

    def __len__(self) -> int:
        return self.length

    def __iter__(self):
        already_run = self.trainer_batches_in_epoch()
        if already_run is not None and already_run >= self.length:
            return  # the trainer re-entered an epoch it has finished
        position = self.position
        if position.started or position.batches >= self.length:
            position.epoch, position.batches = position.epoch + 1, 0
        position.started = True
        self.start.set(position.epoch, position.batches)
        for batch in self.loader:
            position.batches += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        """Same content as :meth:`ShardDataModule.state_dict` (Lightning stores stateful loaders too)."""
        return {"epoch": self.position.epoch, "batches_consumed": self.position.batches}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue from ``state`` on the next iteration."""
        self.position.epoch, self.position.batches = int(state["epoch"]), int(state["batches_consumed"])
        self.position.started = False


class ShardDataModule(L.LightningDataModule):
    """WebDataset shards as a LightningDataModule.

    Args:
        train_shards: a ``.tar`` path, a brace pattern (``dir/train-{000000..000049}.tar``), a glob, or a
            directory with a ``manifest.json`` (its ``train`` split).
        resolution: image side in pixels (for latents: of the encoded images; moments are resolution / 8).
        num_classes: labels must lie in [0, num_classes); a label outside raises with the shard and key.
        val_shards: like ``train_shards``; a directory uses its ``val`` split, else ``test``. None: no validation.
        test_shards: what ``dimlab test`` evaluates, like ``val_shards`` but a directory uses its ``test`` split
            first; None: the validation shards.
        kind: ``pixels`` (pixel-space training, e.g. CIFAR-10), ``images`` (pixels the LightningModule encodes
            with the VAE online) or ``latents`` (pre-extracted VAE moments). pixels and images load the same way.
        channels: image channels, 3 (RGB) or 1 (grey, e.g. the digits demo). Ignored for latents.
        batch_size: training batch size per rank (per device).
        val_batch_size: validation batch size per rank; None: ``batch_size``.
        num_workers: DataLoader worker processes per rank (0: load in the main process).
        samples_per_epoch: global samples per epoch over all ranks; None: the manifest's train count.
            Each rank gets ``ceil(samples_per_epoch / (world * batch_size))`` batches, rounded up to a
            multiple of ``num_workers``.
        shuffle_buffer: samples in each worker's shuffle buffer (filled before the first batch).
        flip: random horizontal flip per training sample (latents: choose the stored flipped moments).
        seed: seeds shard resampling, shuffling and flips per (seed, epoch, rank, worker).
        pin_memory: None: pin when CUDA is available.
    """

    def __init__(
        self,
        train_shards: str,
        resolution: int,
        num_classes: int,
        val_shards: str | None = None,
        test_shards: str | None = None,
        kind: DataKind = "pixels",
        channels: int = 3,
        batch_size: int = 64,
        val_batch_size: int | None = None,
        num_workers: int = 4,
        samples_per_epoch: int | None = None,
        shuffle_buffer: int = 1000,
        flip: bool = True,
        seed: int = 0,
        pin_memory: bool | None = None,
    ) -> None:
        super().__init__()
        if kind not in ("pixels", "images", "latents"):
            raise ValueError(f"kind={kind!r}: expected 'pixels', 'images' or 'latents'")
        if channels not in (1, 3):
            raise ValueError(f"channels={channels}: expected 1 or 3")
        if kind == "latents" and resolution % 8:
            raise ValueError(
                f"resolution={resolution} with kind='latents': expected a multiple of 8 (the VAE downsamples by 8)"
            )
        for name, value in (
            ("resolution", resolution),
            ("num_classes", num_classes),
            ("batch_size", batch_size),
        ):
            if value <= 0:
                raise ValueError(f"{name}={value}: expected a positive integer")
        if (
            num_workers < 0
            or shuffle_buffer < 1
            or (samples_per_epoch is not None and samples_per_epoch <= 0)
        ):
            raise ValueError(
                f"num_workers={num_workers}, shuffle_buffer={shuffle_buffer}, samples_per_epoch={samples_per_epoch}:"
                " expected num_workers >= 0, shuffle_buffer >= 1, samples_per_epoch > 0 or None"
            )
        self.save_hyperparameters()
        self.train_shards, self.val_shards, self.kind = train_shards, val_shards, kind
        self.test_shards = test_shards if test_shards is not None else val_shards
        self.resolution, self.num_classes, self.channels = resolution, num_classes, channels
        self.batch_size, self.val_batch_size = batch_size, val_batch_size or batch_size
        self.num_workers, self.samples_per_epoch, self.shuffle_buffer = (
            num_workers,
            samples_per_epoch,
            shuffle_buffer,
        )
        self.flip, self.seed = flip, seed
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.position = StreamPosition()
        self._start = SharedEpochStart()
        self._skipped = SkippedSampleCounter()
        self.train_set: ShardSet | None = None
        self.val_set: ShardSet | None = None
        self.test_set: ShardSet | None = None
        self.batches_per_epoch: int | None = None
        self.epoch_samples: int | None = None  # samples_per_epoch, or the manifest's train count
        self.rank, self.world_size = 0, 1

    @property
    def skipped_samples(self) -> int:
        """Corrupt samples / tar members skipped so far by all loader workers of this rank."""
        return self._skipped.count

    def setup(self, stage: str | None = None) -> None:
        """Resolve the shards (missing paths and empty patterns fail here) and check them against the options."""
        self.rank, self.world_size = rank_and_world_size()
        if stage in (None, "fit") and self.train_set is None:
            self.train_set = resolve_shards(
                self.train_shards, option="train_shards", default_splits=("train",)
            )
            self._check_manifest(self.train_set, "train_shards")
            self.batches_per_epoch = self._batches_per_epoch(self.train_set)
        if stage in (None, "fit", "validate") and self.val_shards is not None and self.val_set is None:
            self.val_set = resolve_shards(
                self.val_shards, option="val_shards", default_splits=("val", "validation", "test")
            )
            self._check_manifest(self.val_set, "val_shards")
        if stage in (None, "test") and self.test_shards is not None and self.test_set is None:
            self.test_set = resolve_shards(
                self.test_shards, option="test_shards", default_splits=("test", "val", "validation")
            )
            self._check_manifest(self.test_set, "test_shards")

    def _check_manifest(self, shard_set: ShardSet, option: str) -> None:
        manifest = shard_set.manifest
        if manifest is None:
            return
        expected_kind = "latents" if self.kind == "latents" else "images"
        problems = []
        if manifest["kind"] != expected_kind:
            problems.append(
                f"kind {manifest['kind']!r} but kind={self.kind!r} needs {expected_kind!r} shards"
            )
        if manifest.get("resolution", self.resolution) != self.resolution:
            problems.append(f"resolution {manifest['resolution']} but resolution={self.resolution}")
        if self.kind != "latents" and manifest.get("channels", self.channels) != self.channels:
            problems.append(f"channels {manifest['channels']} but channels={self.channels}")
        if (manifest.get("num_classes") or 0) > self.num_classes:
            problems.append(f"num_classes {manifest['num_classes']} but num_classes={self.num_classes}")
        if problems:
            raise ValueError(f"{option}={getattr(self, option)}: the manifest says " + "; ".join(problems))

    def _batches_per_epoch(self, shard_set: ShardSet) -> int:
        samples = self.samples_per_epoch or shard_set.num_samples
        if samples is None:
            raise ValueError(
                f"train_shards={self.train_shards}: no manifest.json to count samples; set samples_per_epoch"
            )
        self.epoch_samples = samples
        workers = max(self.num_workers, 1)
        per_worker = math.ceil(math.ceil(samples / (self.world_size * self.batch_size)) / workers)
        return per_worker * workers

    def _decoder(self, shard_set: ShardSet) -> SampleDecoder:
        moments_shape = None
        if self.kind == "latents":
            side = self.resolution // LATENT_DOWNSAMPLE
            manifest = shard_set.manifest or {}
            moments_shape = tuple(manifest.get("moments_shape", (8, side, side)))
        return SampleDecoder(self.kind, self.resolution, self.channels, self.num_classes, moments_shape)

    def _loader(self, dataset) -> wds.WebLoader:
        # Workers leave SIGTERM / SIGINT / SIGUSR1 to the main process (pre-emption signals the whole group).
        workers = {}
        if self.num_workers > 0:
            workers = {
                "persistent_workers": True,
                "worker_init_fn": ignore_main_process_signals,
                "multiprocessing_context": worker_context(),
            }
        return wds.WebLoader(
            dataset, batch_size=None, num_workers=self.num_workers, pin_memory=self.pin_memory, **workers
        )

    def train_dataloader(self) -> ResumableTrainLoader:
        """One epoch of ``batches_per_epoch`` resampled training batches per iteration."""
        if self.train_set is None:
            self.setup("fit")
        workers = max(self.num_workers, 1)
        stream = TrainStream(
            self.train_set.urls,
            self._decoder(self.train_set),
            batch_size=self.batch_size,
            batches_per_worker=self.batches_per_epoch // workers,
            shuffle_buffer=self.shuffle_buffer,
            flip=self.flip,
            seed=self.seed,
            rank=self.rank,
            start=self._start,
            handler=self._skipped,
        )
        return ResumableTrainLoader(
            self._loader(stream),
            self.position,
            self._start,
            self.batches_per_epoch,
            self._trainer_batches_in_epoch,
        )

    def _trainer_batches_in_epoch(self) -> int | None:
        """Training batches the trainer has fetched in its current epoch (None outside ``fit``)."""
        trainer = self.trainer
        if trainer is None or not trainer.training:
            return None
        return trainer.fit_loop.batch_idx + 1

    def val_dataloader(self) -> wds.WebLoader | list:
        """Every validation sample once per pass over all ranks (no flips); ``[]`` without ``val_shards``."""
        if self.val_shards is None:
            return []
        if self.val_set is None:
            self.setup("validate")
        return self._evaluation_loader(self.val_set)

    def test_dataloader(self) -> wds.WebLoader | list:
        """Every test sample once over all ranks (no flips); ``[]`` without test or validation shards."""
        if self.test_shards is None:
            return []
        if self.test_set is None:
            self.setup("test")
        return self._evaluation_loader(self.test_set)

    def _evaluation_loader(self, shard_set: ShardSet) -> wds.WebLoader:
        stream = ValidationStream(
            shard_set.urls,
            self._decoder(shard_set),
            batch_size=self.val_batch_size,
            rank=self.rank,
            world_size=self.world_size,
            handler=self._skipped,
        )
        return self._loader(stream)

    def state_dict(self) -> dict[str, Any]:
        """Data position for exact resume (saved by Lightning in every checkpoint)."""
        return {
            "epoch": self.position.epoch,
            "batches_consumed": self.position.batches,
            "batches_per_epoch": self.batches_per_epoch,
            "seed": self.seed,
            "world_size": self.world_size,
            "batch_size": self.batch_size,
            "num_workers": self.num_workers,
            "samples_per_epoch": self.epoch_samples,
        }

    def _stream_setting(self, key: str):
        return self.epoch_samples if key == "samples_per_epoch" else getattr(self, key)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the data position; warns, naming the option, when a setting that defines the stream changed."""
        self.position.epoch = int(state_dict["epoch"])
        self.position.batches = int(state_dict["batches_consumed"])
        self.position.started = False
        changed = False
        for key, template in STREAM_SETTINGS.items():
            saved, current = state_dict.get(key), self._stream_setting(key)
            if saved is not None and current is not None and saved != current:
                changed = True
                shown = template.format(current)
                if key == "samples_per_epoch" and self.samples_per_epoch is None:
                    shown += " (the manifest's train count)"
                log.warning(
                    "resuming with %s (checkpoint: %s): the data stream will not match exactly", shown, saved
                )
        saved, current = state_dict.get("batches_per_epoch"), self.batches_per_epoch
        if not changed and saved is not None and current is not None and saved != current:
            # a checkpoint of an older dimlab, which stored only what the options add up to
            log.warning(
                "resuming with %d batches per epoch (checkpoint: %d; from data.samples_per_epoch, data.batch_size, "
                "data.num_workers and the world size): the data stream will not match exactly",
                current,
                saved,
            )
