"""Where ``dimlab fit`` keeps its checkpoints, and what ``--ckpt_path=last`` resumes.

Lightning puts the checkpoints of a ``ModelCheckpoint`` without ``dirpath`` under the first logger's folder
(``<save_dir>/<name>/<version>/checkpoints``). A W&B or TensorBoard logger makes that a new folder on every
launch, so ``--ckpt_path=last`` found nothing and Lightning, after a warning, trained from step 0 again. dimlab
gives every such callback ``<trainer.default_root_dir>/checkpoints`` instead, whatever the logger, and treats
``--ckpt_path=last`` with nothing to resume as an error; ``--ckpt_path=last-or-fresh`` asks for the old
behaviour explicitly (resume if there is a last checkpoint, else start fresh: one command for every launch of a
requeued job).
"""

from __future__ import annotations

import os

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint, OnExceptionCheckpoint
from lightning.pytorch.utilities import rank_zero_info

__all__ = ["LAST", "LAST_OR_FRESH", "NothingToResume", "keep_checkpoints_under_root", "resolve_ckpt_path"]

#: ``--ckpt_path`` value: the newest ``last*.ckpt`` of the checkpoint callbacks; an error when there is none.
LAST = "last"
#: ``--ckpt_path`` value: like ``last`` when there is a last checkpoint, else a fresh start.
LAST_OR_FRESH = "last-or-fresh"


class NothingToResume(ValueError):
    """``--ckpt_path=last`` found no last checkpoint to resume from."""


def keep_checkpoints_under_root(trainer: L.Trainer) -> None:
    """Give every ``ModelCheckpoint`` without a ``dirpath`` ``<trainer.default_root_dir>/checkpoints``."""
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.dirpath is None:
            callback.dirpath = os.path.join(trainer.default_root_dir, "checkpoints")


def _last_checkpoints(trainer: L.Trainer) -> set[str]:
    # The candidates Lightning's own ckpt_path="last" chooses from (trainer/connectors/checkpoint_connector.py).
    found: set[str] = set()
    for callback in trainer.callbacks:
        if isinstance(callback, ModelCheckpoint):
            found |= callback._find_last_checkpoints(trainer)
        elif isinstance(callback, OnExceptionCheckpoint) and os.path.exists(callback.ckpt_path):
            found.add(callback.ckpt_path)
    return found


def _checkpoint_dirs(trainer: L.Trainer) -> str:
    dirs = sorted({str(cb.dirpath) for cb in trainer.checkpoint_callbacks if getattr(cb, "dirpath", None)})
    return ", ".join(dirs) or "(no ModelCheckpoint)"


def resolve_ckpt_path(trainer: L.Trainer, ckpt_path: str | os.PathLike | None) -> str | os.PathLike | None:
    """``ckpt_path`` for ``trainer.fit``: ``last-or-fresh`` becomes ``last`` or None (fresh start); ``last`` with
    no last checkpoint raises :class:`NothingToResume`; anything else is passed on unchanged."""
    if ckpt_path not in (LAST, LAST_OR_FRESH):
        return ckpt_path
    if _last_checkpoints(trainer):
        return LAST
    if ckpt_path == LAST_OR_FRESH:
        rank_zero_info(
            f"--ckpt_path={LAST_OR_FRESH}: no last checkpoint in {_checkpoint_dirs(trainer)}, starting fresh"
        )
        return None
    raise NothingToResume(
        f"--ckpt_path=last: no last checkpoint in {_checkpoint_dirs(trainer)} to resume from; pass "
        f"--ckpt_path={LAST_OR_FRESH} to start fresh when there is none (e.g. the first launch of a requeued "
        "job), or the path of a checkpoint file"
    )
