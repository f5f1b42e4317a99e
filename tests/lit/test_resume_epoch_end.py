"""Resuming from a checkpoint written at the END of an epoch is exact with the shard DataModule.

Lightning 2.6 restores a checkpoint saved in ``on_train_epoch_end`` of an iteration-based run (``max_steps``,
no validation at that epoch end), or one saved after ``fit`` stopped at ``max_steps`` on an epoch boundary,
by re-entering the finished epoch and asking the train loader for one more batch. ``ShardDataModule`` hands
it none, so the next epoch starts at its first batch with its own shuffle, as in the uninterrupted run.
"""

from __future__ import annotations

import hashlib

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from dimlab.lit.module import DiffusionModule

BATCHES_PER_EPOCH = 4  # samples_per_epoch 32 / batch 8


class BatchLog(Callback):
    """(epoch, batch index, global step, batch hash) of every training batch the trainer runs."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, int, int, str]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        digest = hashlib.sha1(batch["x"].numpy().tobytes() + batch["y"].numpy().tobytes()).hexdigest()
        self.seen.append((trainer.current_epoch, batch_idx, trainer.global_step, digest[:12]))


@pytest.fixture(scope="module")
def digits(digit_shards):
    return digit_shards(size=8, shard_size=100)


def _fit(digits, root, stop, num_workers, accumulate, ckpt_path=None, epochs=2):
    from tiny_models import digits8_data, tiny_dim, tiny_trainer

    L.seed_everything(0)
    module = DiffusionModule(
        tiny_dim(num_classes=10),
        schedule="vp_sde",
        p_uncond=0.1,
        lr=1e-3,
        warmup_steps=3,
        ema_decay=0.9,
        adam_eps=1e-8,
    )
    data = digits8_data(
        digits, num_workers=num_workers, samples_per_epoch=8 * BATCHES_PER_EPOCH, shuffle_buffer=20, seed=5
    )
    log = BatchLog()
    # every_n_epochs with no validation: ModelCheckpoint saves in on_train_epoch_end
    checkpoint = ModelCheckpoint(
        dirpath=str(root), filename="{epoch}-{step}", every_n_epochs=1, save_top_k=-1, save_last=True
    )
    steps = epochs * BATCHES_PER_EPOCH // accumulate
    trainer = tiny_trainer(
        root,
        **({"max_steps": steps} if stop == "max_steps" else {"max_steps": -1, "max_epochs": epochs}),
        accumulate_grad_batches=accumulate,
        enable_checkpointing=True,
        callbacks=[checkpoint, log],
    )
    trainer.fit(module, data, ckpt_path=ckpt_path)
    return module, trainer, data, log.seen


def _assert_same_tensors(a, b, what):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), what
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), what
        for key in a:
            _assert_same_tensors(a[key], b[key], f"{what}.{key}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), what
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same_tensors(x, y, f"{what}[{i}]")
    else:
        assert a == b, what


def _assert_same_training_state(straight, resumed):
    """Weights, EMA, AdamW and LR-schedule state, step and data position of two ``_fit`` results."""
    straight_module, straight_trainer, straight_data, _ = straight
    resumed_module, resumed_trainer, resumed_data, _ = resumed
    assert resumed_trainer.global_step == straight_trainer.global_step
    assert resumed_data.state_dict() == straight_data.state_dict()
    _assert_same_tensors(
        straight_module.backbone.state_dict(), resumed_module.backbone.state_dict(), "backbone"
    )
    _assert_same_tensors(
        straight_module.ema.module.state_dict(), resumed_module.ema.module.state_dict(), "ema"
    )
    _assert_same_tensors(
        straight_trainer.optimizers[0].state_dict(), resumed_trainer.optimizers[0].state_dict(), "optimizer"
    )
    _assert_same_tensors(
        straight_trainer.lr_scheduler_configs[0].scheduler.state_dict(),
        resumed_trainer.lr_scheduler_configs[0].scheduler.state_dict(),
        "lr_scheduler",
    )


@pytest.mark.parametrize(
    ("stop", "num_workers", "accumulate"),
    # max_epochs resumed exactly before the fix too; it stays as the control
    [("max_steps", 0, 1), ("max_steps", 2, 1), ("max_steps", 0, 2), ("max_epochs", 0, 1)],
)
def test_resume_from_end_of_epoch_checkpoint_is_exact(digits, tmp_path, stop, num_workers, accumulate):
    """2 epochs straight == 1 epoch + resume from its on_train_epoch_end checkpoint + 1 epoch: weights, EMA,
    AdamW and LR-schedule state, and every batch with its epoch, batch index and global step."""
    straight = _fit(digits, tmp_path / "a", stop, num_workers, accumulate)
    straight_seen = straight[3]
    assert [epoch for epoch, *_ in straight_seen] == [0] * BATCHES_PER_EPOCH + [1] * BATCHES_PER_EPOCH
    epoch_end = tmp_path / "a" / f"epoch=0-step={BATCHES_PER_EPOCH // accumulate}.ckpt"
    saved = torch.load(epoch_end, map_location="cpu", weights_only=False)
    assert saved["ShardDataModule"]["batches_consumed"] == BATCHES_PER_EPOCH, (
        "saved after the epoch's last batch"
    )
    assert saved["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"] == 1, (
        "saved at on_train_epoch_end"
    )

    resumed = _fit(digits, tmp_path / "b", stop, num_workers, accumulate, ckpt_path=str(epoch_end))
    assert resumed[3] == straight_seen[BATCHES_PER_EPOCH:], (
        "the resumed run must see the second epoch's batches"
    )
    assert resumed[1].current_epoch == straight[1].current_epoch
    _assert_same_training_state(straight, resumed)


def test_resume_from_checkpoint_saved_after_fit_stopped_on_an_epoch_boundary(digits, tmp_path):
    """fit(max_steps = one epoch), trainer.save_checkpoint, fit(two epochs) from it == two epochs straight.

    Lightning counts that checkpoint's epoch as started with all its batches run, so its epoch numbers stay one
    ahead (nothing the data can change); the batches, their indices and steps, and the state must match.
    """
    _, first_trainer, _, _ = _fit(digits, tmp_path / "one", "max_steps", 0, 1, epochs=1)
    first_trainer.save_checkpoint(tmp_path / "after_fit.ckpt")
    straight = _fit(digits, tmp_path / "a", "max_steps", 0, 1)
    resumed = _fit(digits, tmp_path / "b", "max_steps", 0, 1, ckpt_path=str(tmp_path / "after_fit.ckpt"))
    assert [seen[1:] for seen in resumed[3]] == [seen[1:] for seen in straight[3][BATCHES_PER_EPOCH:]]
    _assert_same_training_state(straight, resumed)
