"""NonFiniteGuard: a step with a NaN loss or inf gradients is skipped (weights, EMA and Adam state untouched) and
counted; too many in a row stop training with a clear error, and the checkpoints on disk keep good weights."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, Dataset

from dimlab.lit.faults import NonFiniteGuard, NonFiniteTrainingError
from dimlab.lit.module import DiffusionModule
from tiny_models import tiny_dim, tiny_trainer


class _PoisonedBlobs(Dataset):
    """Grey 8x8 images in [-1, 1]; the samples of the listed batches are NaN (batch size 4, no shuffling)."""

    def __init__(self, nan_batches=(), n: int = 64, batch_size: int = 4):
        g = torch.Generator().manual_seed(0)
        self.y = torch.arange(n) % 4
        self.x = (0.5 * torch.randn(n, 1, 8, 8, generator=g)).clamp(-1, 1)
        for b in nan_batches:
            self.x[b * batch_size : (b + 1) * batch_size] = float("nan")

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {"x": self.x[i], "y": self.y[i]}


def _module() -> DiffusionModule:
    torch.manual_seed(0)
    return DiffusionModule(
        tiny_dim(), schedule="vp_sde", lr=1e-3, warmup_steps=0, ema_decay=0.9, adam_eps=1e-8
    )


def _flat(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([v.detach().flatten().float().clone() for v in module.state_dict().values()])


class _Recorder(L.Callback):
    """Backbone, EMA and Adam step counts after every optimizer step."""

    def __init__(self):
        self.weights, self.ema, self.adam_steps = [], [], []

    def on_train_start(self, trainer, pl_module):
        self.weights.append(_flat(pl_module.backbone))
        self.ema.append(_flat(pl_module.ema.module))
        self.adam_steps.append(0)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.weights.append(_flat(pl_module.backbone))
        self.ema.append(_flat(pl_module.ema.module))
        state = trainer.optimizers[0].state
        self.adam_steps.append(int(max((float(s["step"]) for s in state.values()), default=0)))


def test_nan_loss_step_is_skipped_and_counted(tmp_path):
    module, recorder, guard = _module(), _Recorder(), NonFiniteGuard(max_consecutive=3)
    loader = DataLoader(_PoisonedBlobs(nan_batches=(2,)), batch_size=4)
    trainer = tiny_trainer(tmp_path, max_steps=5, callbacks=[guard, recorder])
    trainer.fit(module, loader)

    assert trainer.global_step == 5 and guard.total_skipped == 1 and guard.consecutive == 0
    assert trainer.callback_metrics["train/nonfinite_skipped"] == 1.0
    w, e = recorder.weights, recorder.ema
    # step 3 (batch index 2) is the poisoned one: nothing moved, Adam's own step counter did not advance
    assert torch.equal(w[3], w[2]) and torch.equal(e[3], e[2])
    assert recorder.adam_steps == [0, 1, 2, 2, 3, 4]
    for k in (1, 2, 4, 5):
        assert not torch.equal(w[k], w[k - 1]) and not torch.equal(e[k], e[k - 1]), k
    assert torch.isfinite(w[-1]).all() and torch.isfinite(e[-1]).all()


def test_inf_gradients_with_a_finite_loss_are_skipped(tmp_path):
    module, recorder, guard = _module(), _Recorder(), NonFiniteGuard()
    poison_step = 1

    def poison(grad):
        return grad * math.inf if module.trainer.global_step == poison_step else grad

    module.backbone.final_proj.weight.register_hook(poison)
    losses = []

    class _Losses(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))

    loader = DataLoader(_PoisonedBlobs(), batch_size=4)
    trainer = tiny_trainer(tmp_path, max_steps=3, callbacks=[guard, recorder, _Losses()])
    trainer.fit(module, loader)
    assert all(math.isfinite(v) for v in losses), "the loss stays finite; only the gradients blow up"
    assert guard.total_skipped == 1
    assert torch.equal(recorder.weights[2], recorder.weights[1])
    assert torch.equal(recorder.ema[2], recorder.ema[1])
    assert not torch.equal(recorder.weights[3], recorder.weights[2])


def test_consecutive_bad_steps_stop_with_a_clear_error_and_good_checkpoints(tmp_path):
    module, recorder = _module(), _Recorder()
    loader = DataLoader(_PoisonedBlobs(nan_batches=range(3, 16)), batch_size=4)
    ckpt = ModelCheckpoint(
        dirpath=str(tmp_path / "ckpt"), every_n_train_steps=1, save_top_k=-1, save_last=True
    )
    trainer = tiny_trainer(
        tmp_path,
        max_steps=20,
        callbacks=[NonFiniteGuard(max_consecutive=2), recorder, ckpt],
        enable_checkpointing=True,
    )
    with pytest.raises(NonFiniteTrainingError) as info:
        trainer.fit(module, loader)
    message = str(info.value)
    assert "2 optimizer steps in a row" in message and "max_consecutive=2" in message
    assert str(tmp_path / "ckpt" / "last.ckpt") in message
    assert trainer.global_step == 4, "steps 4 and 5 are bad; the second one stops the run"

    good = recorder.weights[3]  # after the last good step
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", map_location="cpu", weights_only=False)
    weights = torch.cat(
        [v.flatten().float() for k, v in saved["state_dict"].items() if k.startswith("backbone.")]
    )
    assert torch.equal(weights, good)
    for path in (tmp_path / "ckpt").glob("*.ckpt"):
        state = torch.load(path, map_location="cpu", weights_only=False)
        assert all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point())
        assert all(torch.isfinite(v).all() for v in state["ema_backbone"].values() if v.is_floating_point())


def test_guard_counts_survive_a_checkpoint(tmp_path):
    guard = NonFiniteGuard(max_consecutive=4)
    guard.total_skipped, guard.consecutive = 7, 2
    restored = NonFiniteGuard(max_consecutive=4)
    restored.load_state_dict(guard.state_dict())
    assert (restored.total_skipped, restored.consecutive) == (7, 2)
    with pytest.raises(ValueError, match="max_consecutive must be >= 1, got 0"):
        NonFiniteGuard(max_consecutive=0)
