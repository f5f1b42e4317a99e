"""The one tiny-model recipe of the test suite (fast on 2 CPU cores), plus tiny data and a quiet CPU Trainer.

Every test that needs a small DiM or U-ViT builds it with :func:`tiny_dim` / :func:`tiny_uvit`, passing only what
it changes (``tiny_dim(depth=7, in_channels=2)``); configs take :func:`tiny_dim_args`. The digit shards all test
folders share come from the ``digit_shards`` fixture (``tests/conftest.py``).
"""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from dimlab.data.datamodule import ShardDataModule
from dimlab.lit.module import DiffusionModule
from dimlab.models.dim import DiM
from dimlab.models.uvit import UViT

#: Constructor arguments of the tiny DiM: 8x8 single-channel inputs (4x4 tokens), 4 classes, the torch scan.
TINY_DIM = dict(
    input_size=8,
    patch_size=2,
    in_channels=1,
    hidden_size=32,
    depth=3,
    num_classes=4,
    d_state=4,
    scan_backend="torch",
)
#: Constructor arguments of the tiny U-ViT, on the same inputs.
TINY_UVIT = dict(
    input_size=8, patch_size=2, in_channels=1, hidden_size=32, depth=3, num_heads=2, num_classes=4
)


def tiny_dim_args(**overrides) -> dict:
    """:data:`TINY_DIM` with ``overrides`` (DiM constructor arguments) applied, e.g. for a YAML config."""
    return {**TINY_DIM, **overrides}


def tiny_dim(**overrides) -> DiM:
    """The tiny DiM, with any constructor argument overridden."""
    return DiM(**tiny_dim_args(**overrides))


def tiny_uvit(**overrides) -> UViT:
    """The tiny U-ViT, with any constructor argument overridden."""
    return UViT(**{**TINY_UVIT, **overrides})


def train_tiny_checkpoint(path, schedule: str = "sd_discrete", steps: int = 2, **overrides):
    """Train ``tiny_dim(**overrides)`` for ``steps`` optimizer steps on 8 random images and save a checkpoint."""
    size = overrides.get("input_size", TINY_DIM["input_size"])
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    data = [{"x": torch.rand(1, size, size, generator=g) * 2 - 1, "y": torch.tensor(i % 4)} for i in range(8)]
    module = DiffusionModule(tiny_dim(**overrides), schedule=schedule, warmup_steps=0, lr=1e-3, ema_decay=0.5)
    trainer = tiny_trainer(path.parent, max_steps=steps)
    trainer.fit(module, DataLoader(data, batch_size=4))
    trainer.save_checkpoint(path)
    return path


def tiny_trainer(root, max_steps: int = 4, **overrides):
    """A quiet one-process CPU ``L.Trainer`` for short ``fit`` runs in tests, writing only under ``root``.

    No logger, no checkpointing, no progress bar, no model summary and no validation (sanity check included);
    ``overrides`` are passed to ``L.Trainer`` and win over these defaults, e.g. ``callbacks=[...]``,
    ``enable_checkpointing=True`` for a run with a ``ModelCheckpoint`` or ``accelerator="cuda"``.
    """
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
