"""Tiny backbones, data and a quiet one-process CPU Lightning Trainer shared by tests (fast on 2 CPU cores)."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset


def tiny_uvit(num_classes: int = 4, channels: int = 1, size: int = 8):
    from dimlab.models.uvit import UViT

    return UViT(
        input_size=size,
        patch_size=2,
        in_channels=channels,
        hidden_size=32,
        depth=3,
        num_heads=2,
        num_classes=num_classes,
    )


def tiny_dim(num_classes: int = 4, channels: int = 1, size: int = 8):
    from dimlab.models.dim import DiM

    return DiM(
        input_size=size,
        patch_size=2,
        in_channels=channels,
        hidden_size=32,
        depth=3,
        num_classes=num_classes,
        d_state=4,
        scan_backend="torch",
    )


def tiny_trainer(root, max_steps: int = 4, **overrides):
    """A quiet one-process CPU ``L.Trainer`` for short ``fit`` runs in tests, writing only under ``root``.

    No logger, no checkpointing, no progress bar, no model summary and no validation (sanity check included);
    ``overrides`` are passed to ``L.Trainer`` and win over these defaults, e.g. ``callbacks=[...]``,
    ``enable_checkpointing=True`` for a run with a ``ModelCheckpoint`` or ``accelerator="cuda"``.
    """
    import lightning as L

    settings = dict(
        accelerator="cpu",
        devices=1,
        max_steps=max_steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        default_root_dir=str(root),
    )
    settings.update(overrides)
    return L.Trainer(**settings)


def digits8_data(path, **overrides):
    """A ``ShardDataModule`` over the 8x8 grey digits shards (10 classes, batch 8, no workers); overrides win."""
    from dimlab.data.datamodule import ShardDataModule

    settings = dict(resolution=8, num_classes=10, channels=1, batch_size=8, num_workers=0)
    settings.update(overrides)
    return ShardDataModule(str(path), **settings)


class TinyImages(Dataset):
    """``n`` fixed random 1x8x8 images in [-1, 1] labelled ``i % 4``: a map-style dataset for short CPU/GPU fits."""

    def __init__(self, n: int = 32):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 1, 8, 8, generator=g).clamp(-1, 1)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "y": torch.tensor(i % 4)}
