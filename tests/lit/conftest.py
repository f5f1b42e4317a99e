"""Fixtures for LightningModule tests: a tiny in-memory data set and tiny backbones."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, Dataset


class ClassBlobs(Dataset):
    """Deterministic (C, H, W) images in [-1, 1] whose mean brightness encodes the class."""

    def __init__(self, n: int = 64, channels: int = 1, size: int = 8, num_classes: int = 4, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.y = torch.arange(n) % num_classes
        base = (self.y.float() / max(1, num_classes - 1) * 1.6 - 0.8).view(n, 1, 1, 1)
        self.x = (base + 0.1 * torch.randn(n, channels, size, size, generator=g)).clamp(-1, 1)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {"x": self.x[i], "y": self.y[i]}


class BlobData(L.LightningDataModule):
    """In-memory data module (no shuffling, so epochs are identical)."""

    def __init__(self, batch_size: int = 8, **kwargs):
        super().__init__()
        self.batch_size = batch_size
        self.kwargs = kwargs

    def train_dataloader(self):
        return DataLoader(ClassBlobs(**self.kwargs), batch_size=self.batch_size, shuffle=False)

    def val_dataloader(self):
        return DataLoader(
            ClassBlobs(n=16, seed=1, **{k: v for k, v in self.kwargs.items() if k != "n"}),
            batch_size=self.batch_size,
        )


@pytest.fixture
def blob_data():
    return BlobData


@pytest.fixture(params=["uvit", "dim"])
def tiny_backbone(request):
    from tiny_models import tiny_dim, tiny_uvit

    return {"uvit": tiny_uvit, "dim": tiny_dim}[request.param]


@pytest.fixture
def make_trainer():
    from tiny_models import tiny_trainer

    return tiny_trainer
