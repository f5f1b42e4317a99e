"""Checkpoint files that are never half-written, and no leftovers of writers that were killed."""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from dimlab.files import atomic_write, remove_stale_temporaries

log = logging.getLogger("dimlab")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write each checkpoint to a temporary file in the same folder, fsync it, then ``os.replace`` it into place.

    Lightning's stock IO streams straight into the destination, so a crash or pre-emption mid-write leaves a
    truncated ``last.ckpt`` that cannot be resumed. A rename within one filesystem is atomic: readers see the old
    file or the new one, never a partial one. :attr:`saved_steps` records the ``global_step`` of each file
    written, so ``dimlab fit`` can say which step its last checkpoint holds.
    """

    def __init__(self) -> None:
        super().__init__()
        #: path -> ``global_step`` of the checkpoints this process wrote.
        self.saved_steps: dict[str, int | None] = {}

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        with atomic_write(path, "wb", fsync=True) as fh:
            torch.save(checkpoint, fh)
        self.saved_steps[str(path)] = checkpoint.get("global_step")


class StaleCheckpointCleanup(L.Callback):
    """At the start of ``fit``, remove the hidden ``.<name>.ckpt.tmp-<pid>-<token>`` files that checkpoint writes
    killed mid-write (SIGKILL, OOM killer, a node failure) left in the checkpoint folders.

    :class:`AtomicCheckpointIO` removes its temporary file whenever a write fails, but a killed writer cannot, and
    a DiM-H/2 checkpoint is ~14 GB. Global rank 0 (the one process that writes checkpoints) removes those whose
    writer process no longer runs (:func:`dimlab.files.remove_stale_temporaries`) in the folder of every
    ``ModelCheckpoint``, after their ``setup`` chose it.
    """

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        folders = {str(cb.dirpath) for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint)}
        for folder in sorted(f for f in folders if f != "None"):
            for temporary in remove_stale_temporaries(folder, "*.ckpt"):
                log.warning("removed %s, an unfinished checkpoint of a writer that was killed", temporary)
