"""Callbacks that keep long runs alive: pre-emption checkpoints, non-finite step guard, skipped-sample metric.

* :class:`PreemptionCheckpoint`: SIGTERM / SIGINT / SIGUSR1 (pre-emption, Ctrl-C, SLURM's ``--signal``) ->
  ``last.ckpt`` at the next optimizer-step boundary, then a stop without a validation pass (and a SLURM requeue for
  the requeue signal); ``dimlab fit`` then exits with status 128 + the signal number, and the next launch with
  ``--ckpt_path=last`` continues at the same step and data position.
* :class:`NonFiniteGuard`: an optimizer step whose loss or gradients are not finite is skipped and counted; after
  ``max_consecutive`` in a row training stops with :class:`NonFiniteTrainingError`; the checkpoints keep good
  weights, since skipped steps change nothing.
* :class:`SkippedSampleMonitor`: logs how many corrupt samples the data module skipped (``data/skipped_samples``).

All three work under DDP and FSDP: every decision that must be the same on every rank is reduced over ranks.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from dimlab.lit.optim_step import StepGradNorm

log = logging.getLogger("dimlab")

__all__ = ["NonFiniteGuard", "NonFiniteTrainingError", "PreemptionCheckpoint", "SkippedSampleMonitor"]


def _at_step_boundary(trainer: L.Trainer, batch_idx: int) -> bool:
    """True when the batch that just ended ran an optimizer step (not a gradient-accumulation micro-batch)."""
    return (batch_idx + 1) % trainer.accumulate_grad_batches == 0 or bool(trainer.is_last_batch)


def _is_first_instance(callback: L.Callback, trainer: L.Trainer) -> bool:
    """Whether ``callback`` is the first of its class in the trainer (a default and a config entry may both add
    one; only the first acts, so signal handlers and counters are not doubled)."""
    first = next(cb for cb in trainer.callbacks if type(cb) is type(callback))
    return first is callback


def _slurm_job_id() -> str | None:
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array_job is not None and "SLURM_ARRAY_TASK_ID" in os.environ:
        return f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")


class PreemptionCheckpoint(L.Callback):
    """On a termination signal, save ``last.ckpt`` at the next optimizer-step boundary and stop training.

    The signal handler only records the signal. At the end of the next batch that completed an optimizer step
    (the last batch of an epoch included), the ranks agree (any rank that saw a signal is enough, since a
    launcher may signal only rank 0), every rank calls ``trainer.save_checkpoint`` on
    ``<checkpoint dir>/last.ckpt`` (the folder of the first
    ``ModelCheckpoint``, where ``--ckpt_path=last`` looks), and ``trainer.should_stop`` ends the run. The
    checkpoint holds the weights, EMA, optimizer, loop counters and the DataModule's stream position, so
    ``dimlab fit ... --ckpt_path=last`` resumes at the same step with the same next batch.

    Once the stop is set no validation pass runs (Lightning would start one for an early stop, eating into the
    scheduler's grace period), and :attr:`stop_signal` holds the signal every rank stopped for:
    ``dimlab fit`` exits with status ``128 + stop_signal`` (143 for SIGTERM, 130 for SIGINT, 138 for SIGUSR1), so
    wrappers, torchrun and schedulers do not take a pre-empted run for a finished one. A second SIGINT while
    waiting for the step boundary interrupts at once (KeyboardInterrupt), as Ctrl-C usually does.

    DataLoader workers of :class:`~dimlab.data.datamodule.ShardDataModule` ignore these signals (they reach the
    whole process group), see :mod:`dimlab.data.workers`.

    For a signal in ``requeue_signals`` (default SIGUSR1, which SLURM sends ahead of the time limit with
    ``#SBATCH --signal=SIGUSR1@90``) inside a SLURM job, rank 0 then runs ``scontrol requeue <job id>``. SIGTERM
    (``scancel``, a pre-empting scheduler, ``kill``) saves and stops without requeueing.

    Why not Lightning's own handlers: its SIGTERM handling stops after the batch but saves nothing (and issues a
    collective from inside the signal handler), and its SLURM SIGUSR1 handler writes ``hpc_ckpt_N.ckpt`` from
    inside the handler, i.e. at an arbitrary point of a step, possibly mid optimizer update. This callback
    installs its SIGUSR1 handler in ``setup`` (Lightning then leaves SIGUSR1 alone) and its SIGTERM handler in
    ``on_train_start`` (after Lightning's), and the trainer restores the previous handlers at the end of ``fit``.

    Args:
        signals: names of the signals to handle (``SIGTERM``, ``SIGINT``, ``SIGUSR1``, ``SIGUSR2``, ...).
        requeue_signals: the subset after which rank 0 requeues the SLURM job.
        requeue: False never requeues (e.g. when the sbatch script requeues itself).
    """

    def __init__(
        self,
        signals: list[str] | tuple[str, ...] = ("SIGTERM", "SIGINT", "SIGUSR1"),
        requeue_signals: list[str] | tuple[str, ...] = ("SIGUSR1",),
        requeue: bool = True,
    ):
        self.signals = [self._signal(name, "signals") for name in signals]
        self.requeue_signals = {self._signal(name, "requeue_signals") for name in requeue_signals}
        self.requeue = requeue
        self.received: signal.Signals | None = None
        self.saved_path: Path | None = None
        self.saved_step: int | None = None
        #: The signal all ranks stopped for (None: no pre-emption stop in the last fit).
        self.stop_signal: signal.Signals | None = None
        self._active = False
        self._limit_val_batches: int | float | None = None
        self._received_at: float | None = None
        self._previous: dict[signal.Signals, Any] = {}

    @staticmethod
    def _signal(name: str, option: str) -> signal.Signals:
        try:
            return signal.Signals[str(name).upper()]
        except KeyError:
            raise ValueError(
                f"PreemptionCheckpoint {option}: unknown signal {name!r}; expected names such as SIGTERM, SIGUSR1"
            ) from None

    # ----------------------------------------------------------------------------------------- handlers
    def _handle(self, signum: int, frame) -> None:
        # Only a flag: saving here would run at an arbitrary point of a step (and, under DDP, out of step with
        # the other ranks' collectives).
        if self.received is None:
            self.received = signal.Signals(signum)
            self._received_at = time.monotonic()
            log.warning(
                "received %s: saving a checkpoint and stopping after the current step", self.received.name
            )
        elif signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: do not wait for the step boundary

    def _install(self, signals) -> None:
        for sig in signals:
            signal.signal(sig, self._handle)

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._previous.clear()
        self._active = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or not _is_first_instance(self, trainer):
            return
        if threading.current_thread() is not threading.main_thread():
            log.warning(
                "PreemptionCheckpoint: not in the main thread, so no signal handlers (no pre-emption save)"
            )
            return
        self._active = True
        self.received = None
        self._received_at = None
        self.stop_signal = None
        # The handlers from before fit are what teardown puts back (Lightning's SIGTERM handler comes and goes).
        self._previous = {sig: signal.getsignal(sig) for sig in self.signals}
        self._install([s for s in self.signals if s != signal.SIGTERM])

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._active and signal.SIGTERM in self.signals:
            self._install([signal.SIGTERM])

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._active:
            self._restore()
        if self._limit_val_batches is not None:
            trainer.limit_val_batches, self._limit_val_batches = self._limit_val_batches, None

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        # Lightning skips the teardown hooks when fit raises: without this a later SIGTERM would only set a flag.
        if self._active:
            self._restore()

    # ------------------------------------------------------------------------------------------- saving
    @staticmethod
    def checkpoint_path(trainer: L.Trainer) -> Path:
        """``last.ckpt`` in the first ModelCheckpoint's folder (``<default_root_dir>/checkpoints`` without one)."""
        for callback in trainer.checkpoint_callbacks:
            if isinstance(callback, ModelCheckpoint) and callback.dirpath:
                name = callback.CHECKPOINT_NAME_LAST + callback.FILE_EXTENSION
                return Path(callback.dirpath) / name
        return Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx):
        if not self._active or not _at_step_boundary(trainer, batch_idx):
            return
        # One collective decides and agrees on the signal: the largest signal number any rank received (0: none).
        mine = torch.tensor(
            self.received.value if self.received is not None else 0, device=trainer.strategy.root_device
        )
        agreed = int(trainer.strategy.reduce(mine, reduce_op="max"))
        if agreed == 0:
            return
        self.stop_signal = signal.Signals(agreed)
        path = self.checkpoint_path(trainer)
        trainer.save_checkpoint(path)
        for callback in trainer.checkpoint_callbacks:
            if (
                isinstance(callback, ModelCheckpoint)
                and callback.save_last
                and Path(callback.dirpath) == path.parent
            ):
                # ModelCheckpoint then overwrites this file at its next "last" save instead of writing last-v1.ckpt
                callback.last_model_path = str(path)
        self.saved_path, self.saved_step = path, trainer.global_step
        why = self.received.name if self.received is not None else f"another rank's {self.stop_signal.name}"
        # how much of the scheduler's signal window (SLURM --signal=SIGUSR1@90) the step and the save took
        took = (
            f" ({time.monotonic() - self._received_at:.1f} s after the signal)" if self._received_at else ""
        )
        log.warning("%s: saved %s at step %d%s; stopping", why, path, trainer.global_step, took)
        if self.requeue and self.received in self.requeue_signals and trainer.is_global_zero:
            self._requeue_slurm_job()
        trainer.should_stop = True
        # Lightning validates before an early stop; limit_val_batches=0 skips it (restored in teardown).
        self._limit_val_batches, trainer.limit_val_batches = trainer.limit_val_batches, 0

    @staticmethod
    def _requeue_slurm_job() -> None:
        job_id = _slurm_job_id()
        if job_id is None:
            log.info("not a SLURM job: no requeue")
            return
        result = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True, check=False)
        if result.returncode == 0:
            log.warning("requeued SLURM job %s", job_id)
        else:
            log.error("scontrol requeue %s failed (%d): %s", job_id, result.returncode, result.stderr.strip())


class NonFiniteTrainingError(RuntimeError):
    """Training stopped because too many optimizer steps in a row had a non-finite loss or gradients."""


class NonFiniteGuard(L.Callback):
    """Skip optimizer steps whose loss or gradients are not finite; stop after ``max_consecutive`` in a row.

    After backward (``on_before_optimizer_step``, before clipping), the step is bad when any micro-batch loss or
    the total gradient norm is NaN/inf on any rank. A bad step's gradients are dropped
    (``optimizer.zero_grad(set_to_none=True)``: AdamW then leaves weights and moments alone) and the module is told
    to leave its EMA alone (``pl_module.optimizer_step_skipped``). The step still counts as a ``global_step`` and
    advances the LR schedule, like a step skipped by AMP's GradScaler, so the next step draws fresh noise. The
    total is logged as ``train/nonfinite_skipped`` and kept in checkpoints.

    Checking gradients rather than returning ``None`` from ``training_step`` keeps DDP safe: a rank that skipped
    backward alone would leave the others waiting in the gradient all-reduce. It costs one host sync per
    optimizer step.

    With a gradient scaler (``precision: 16-mixed``) the scaler already skips overflowing steps and calibrates
    its scale through them, so the guard stays out of the way.

    Raises:
        NonFiniteTrainingError: after ``max_consecutive`` bad steps in a row (on every rank at once). A skipped step
            leaves the weights as they were, so every checkpoint on disk, ``last.ckpt`` included, holds good
            weights; the error names the last one.
    """

    def __init__(self, max_consecutive: int = 10):
        if max_consecutive < 1:
            raise ValueError(f"NonFiniteGuard max_consecutive must be >= 1, got {max_consecutive}")
        self.max_consecutive = max_consecutive
        self.consecutive = 0
        self.total_skipped = 0
        self._bad_loss: torch.Tensor | None = None
        self._active = True

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._active = _is_first_instance(self, trainer)

    def on_before_backward(
        self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor
    ) -> None:
        if not self._active:
            return
        bad = ~torch.isfinite(loss.detach()).all()
        self._bad_loss = bad if self._bad_loss is None else self._bad_loss | bad

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        if not self._active or getattr(trainer.precision_plugin, "scaler", None) is not None:
            self._bad_loss = None
            return
        bad = self._bad_loss if self._bad_loss is not None else torch.tensor(False)
        shared = getattr(pl_module, "step_grad_norm", None)  # the DiffusionModule's norm of this step
        total_norm = (shared or StepGradNorm()).get(optimizer)
        if total_norm is not None:
            bad = bad.to(total_norm.device) | ~torch.isfinite(total_norm)
        self._bad_loss = None
        bad = trainer.strategy.reduce_boolean_decision(bool(bad), all=False)
        if bad:
            optimizer.zero_grad(set_to_none=True)
            pl_module.optimizer_step_skipped = True
            self.consecutive += 1
            self.total_skipped += 1
            log.warning(
                "step %d: non-finite loss or gradients, optimizer step skipped (%d in a row, %d in total)",
                trainer.global_step,
                self.consecutive,
                self.total_skipped,
            )
        else:
            self.consecutive = 0
        pl_module.log("train/nonfinite_skipped", float(self.total_skipped), on_step=True, on_epoch=False)
        if self.consecutive >= self.max_consecutive:
            raise NonFiniteTrainingError(self._stop_message(trainer))

    def _stop_message(self, trainer: L.Trainer) -> str:
        last = ""
        callback = trainer.checkpoint_callback
        if isinstance(callback, ModelCheckpoint):
            last = callback.last_model_path or callback.best_model_path
        where = (
            f"the last checkpoint, {last}, holds" if last else "no checkpoint was written yet; it would hold"
        )
        return (
            f"training stopped at step {trainer.global_step}: {self.consecutive} optimizer steps in a row had a "
            f"non-finite loss or gradients (NonFiniteGuard max_consecutive={self.max_consecutive}, "
            f"{self.total_skipped} skipped in total). No update was applied on those steps, so {where} the last "
            "good weights. Usual causes: learning rate too high, fp16 overflow (try bf16-mixed), a bad data "
            "shard, or gradient clipping off."
        )

    def state_dict(self) -> dict[str, int]:
        return {"total_skipped": self.total_skipped, "consecutive": self.consecutive}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self.total_skipped = int(state_dict.get("total_skipped", 0))
        self.consecutive = int(state_dict.get("consecutive", 0))


class SkippedSampleMonitor(L.Callback):
    """Log ``data/skipped_samples``: corrupt samples / tar members the DataModule skipped, summed over ranks.

    ``ShardDataModule`` skips a bad sample with a warning naming the shard and key and counts it
    (``skipped_samples``); this puts the running total next to the loss curves. The sum over ranks is taken every
    ``trainer.log_every_n_steps`` steps (one small all-reduce). Data modules without ``skipped_samples`` are
    ignored.
    """

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx):
        count = getattr(trainer.datamodule, "skipped_samples", None)
        every = max(int(trainer.log_every_n_steps), 1)
        if count is None or not _at_step_boundary(trainer, batch_idx) or trainer.global_step % every:
            return
        total = trainer.strategy.reduce(torch.tensor(float(count), device=pl_module.device), reduce_op="sum")
        pl_module.log("data/skipped_samples", total, on_step=True, on_epoch=False, rank_zero_only=True)
