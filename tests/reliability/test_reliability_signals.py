"""Pre-emption in-process: SIGTERM / SIGUSR1 during training -> last.ckpt at the next step boundary, a clean stop,
and a resume that equals an uninterrupted run (test_reliability_signals_cli.py does it through ``dimlab fit``)."""

from __future__ import annotations

import os
import signal
import stat
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from dimlab.lit.faults import PreemptionCheckpoint
from dimlab.lit.module import DiffusionModule
from tiny_models import digits8_data, tiny_dim, tiny_trainer

PREEMPTIBLE = (
    "--checkpoint.every_n_train_steps=2",
    "--trainer.callbacks+=dimlab.lit.faults.PreemptionCheckpoint",
)


class _SendSignal(L.Callback):
    """Deliver ``sig`` to this process (a real signal, through the OS) when ``global_step`` reaches ``step``."""

    def __init__(self, step: int, sig: signal.Signals):
        self.step, self.sig = step, sig

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.sig)


def _fit(
    digits: Path, root: Path, max_steps: int, callbacks=(), ckpt_path=None
) -> tuple[L.Trainer, DiffusionModule]:
    L.seed_everything(0)
    module = DiffusionModule(
        tiny_dim(num_classes=10), schedule="vp_sde", lr=1e-3, warmup_steps=3, ema_decay=0.9, adam_eps=1e-8
    )
    # 6 batches per epoch: the runs below cross an epoch boundary
    data = digits8_data(digits, samples_per_epoch=48, shuffle_buffer=50, seed=3)
    trainer = tiny_trainer(
        root,
        max_steps,
        enable_checkpointing=True,
        callbacks=[ModelCheckpoint(dirpath=str(root / "ckpt"), save_last=True), *callbacks],
    )
    trainer.fit(module, data, ckpt_path=ckpt_path)
    return trainer, module


# A signal mid-epoch saves at that step, and so does one during the epoch's last batch (step 6): the resumed run
# starts the next epoch at its first batch.
@pytest.mark.parametrize(("signal_step", "stop_step"), [(4, 4), (6, 6)])
def test_sigterm_saves_last_ckpt_and_the_resumed_run_matches_a_straight_one(
    digits8, tmp_path, signal_step, stop_step
):
    before = signal.getsignal(signal.SIGTERM)
    preemption = PreemptionCheckpoint()
    trainer, _ = _fit(digits8, tmp_path / "a", 100, [_SendSignal(signal_step, signal.SIGTERM), preemption])
    assert trainer.global_step == stop_step and preemption.received == signal.SIGTERM
    last = tmp_path / "a" / "ckpt" / "last.ckpt"
    assert preemption.saved_path == last and preemption.saved_step == stop_step
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == stop_step
    assert not list(last.parent.glob("last-v*.ckpt")), "ModelCheckpoint must reuse last.ckpt, not version it"
    assert signal.getsignal(signal.SIGTERM) is before, "the trainer restores the previous SIGTERM handler"

    # the next launch: --ckpt_path=last, to step 9, equals an uninterrupted 9-step run (data stream included)
    resumed_trainer, resumed = _fit(digits8, tmp_path / "a", 9, ckpt_path="last")
    assert resumed_trainer.global_step == 9
    _, straight = _fit(digits8, tmp_path / "b", 9)
    for (name, a), b in zip(
        straight.backbone.state_dict().items(), resumed.backbone.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    for a, b in zip(
        straight.ema.module.state_dict().values(), resumed.ema.module.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)


def test_sigusr1_in_a_slurm_job_saves_and_requeues(digits8, tmp_path, monkeypatch):
    # A stand-in `scontrol` on PATH records its arguments (there is no SLURM controller here).
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "scontrol.args"
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" > {record}\n')
    scontrol.chmod(scontrol.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")

    preemption = PreemptionCheckpoint()
    trainer, _ = _fit(digits8, tmp_path / "run", 100, [_SendSignal(2, signal.SIGUSR1), preemption])
    assert trainer.global_step == 2 and preemption.received == signal.SIGUSR1
    assert (tmp_path / "run" / "ckpt" / "last.ckpt").is_file()
    assert record.read_text().split() == ["requeue", "4242"]

    # SIGTERM (scancel, pre-emption) saves but never requeues
    record.unlink()
    preemption = PreemptionCheckpoint()
    trainer, _ = _fit(digits8, tmp_path / "run2", 100, [_SendSignal(2, signal.SIGTERM), preemption])
    assert trainer.global_step == 2 and (tmp_path / "run2" / "ckpt" / "last.ckpt").is_file()
    assert not record.exists()


class _CountValidation(L.Callback):
    """How many validation passes ran during ``fit``."""

    def __init__(self):
        self.passes = 0

    def on_validation_start(self, trainer, pl_module):
        self.passes += 1


def test_a_preemption_stop_runs_no_validation_pass_and_records_the_signal(digits8, tmp_path):
    # Lightning validates before any early stop; a pre-empted run must not spend its grace period on that.
    L.seed_everything(0)
    module = DiffusionModule(tiny_dim(num_classes=10), schedule="vp_sde", warmup_steps=0)
    data = digits8_data(digits8, val_shards=str(digits8), samples_per_epoch=400, shuffle_buffer=50)
    preemption, validation = PreemptionCheckpoint(), _CountValidation()
    trainer = tiny_trainer(
        tmp_path,
        100,
        enable_checkpointing=True,
        limit_val_batches=1,
        val_check_interval=40,
        check_val_every_n_epoch=None,
        callbacks=[
            ModelCheckpoint(dirpath=str(tmp_path / "ckpt")),
            _SendSignal(3, signal.SIGUSR1),
            preemption,
            validation,
        ],
    )
    trainer.fit(module, data)
    assert trainer.global_step == 3 and validation.passes == 0
    assert preemption.stop_signal == signal.SIGUSR1
    assert trainer.limit_val_batches == 1, "the trainer's own setting comes back after fit"


def test_unknown_signal_name_is_rejected():
    with pytest.raises(ValueError, match="signals: unknown signal 'SIGFOO'"):
        PreemptionCheckpoint(signals=["SIGFOO"])
