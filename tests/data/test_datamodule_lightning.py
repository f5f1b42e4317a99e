"""Exact data resume through a real Lightning Trainer: checkpoints store the DataModule's position."""

from __future__ import annotations

import hashlib

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from dimlab.data.datamodule import ShardDataModule


class BatchRecorder(L.LightningModule):
    """Records a hash of every training batch; one parameter so the optimizer has something to step."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.seen: list[str] = []

    def training_step(self, batch, batch_idx):
        self.seen.append(
            hashlib.sha1(batch["x"].numpy().tobytes() + batch["y"].numpy().tobytes()).hexdigest()
        )
        return (self.weight * batch["x"].mean()) ** 2 + self.weight**2

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(digits_dir, root, ckpt_path=None, num_workers=0):
    data = ShardDataModule(
        str(digits_dir),
        resolution=16,
        num_classes=10,
        channels=1,
        batch_size=16,
        num_workers=num_workers,
        samples_per_epoch=96,
        shuffle_buffer=32,
        seed=11,
    )
    model = BatchRecorder()
    checkpoints = ModelCheckpoint(dirpath=root, filename="{step}", every_n_train_steps=1, save_top_k=-1)
    trainer = L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[checkpoints],
        limit_val_batches=0,
    )
    trainer.fit(model, datamodule=data, ckpt_path=ckpt_path)
    return model.seen


@pytest.mark.parametrize("num_workers", [0, 2])
def test_trainer_resume_continues_the_data_stream(digits_dir, tmp_path, num_workers):
    full = _fit(digits_dir, tmp_path / "full", num_workers=num_workers)
    assert len(full) == 12  # 2 epochs x 6 batches
    checkpoint = torch.load(tmp_path / "full" / "step=3.ckpt", weights_only=False)
    assert checkpoint["ShardDataModule"]["epoch"] == 0
    assert checkpoint["ShardDataModule"]["batches_consumed"] == 3
    resumed = _fit(digits_dir, tmp_path / "mid", tmp_path / "full" / "step=3.ckpt", num_workers)
    assert resumed == full[3:]
    resumed = _fit(digits_dir, tmp_path / "end", tmp_path / "full" / "step=6.ckpt", num_workers)
    assert resumed == full[6:]
