"""Checkpoint files that are never half-written."""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from dimlab.files import atomic_write


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write each checkpoint to a temporary file in the same folder, fsync it, then ``os.replace`` it into place.

    Lightning's stock IO streams straight into the destination, so a crash or pre-emption mid-write leaves a
    truncated ``last.ckpt`` that cannot be resumed. A rename within one filesystem is atomic: readers see the old
    file or the new one, never a partial one.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        with atomic_write(path, "wb", fsync=True) as fh:
            torch.save(checkpoint, fh)
