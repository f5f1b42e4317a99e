"""Checkpoints survive crashes: a save that dies mid-write leaves the previous file intact (AtomicCheckpointIO, which
DimlabCLI installs), and a run that crashes between checkpoints resumes from the last one, losing only the steps
since (exact continuation of the data stream is tested in test_reliability_signals.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from reliability_cli import fit_args
from torch.utils.data import DataLoader

from dimlab.commands.fit import DimlabCLI
from dimlab.commands.main import main
from dimlab.files import remove_stale_temporaries
from dimlab.lit.checkpoint_io import AtomicCheckpointIO
from dimlab.lit.module import DiffusionModule
from tiny_models import TinyImages, tiny_dim, tiny_trainer


def _torch_save_that_dies_after(nbytes: int):
    """A ``torch.save`` that writes the first ``nbytes`` of the real payload, then fails like a full disk."""
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        import io

        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        f.write(buffer.getvalue()[:nbytes])
        raise OSError(28, "No space left on device")

    return save


def test_a_save_that_dies_mid_write_leaves_the_old_checkpoint(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "ckpt" / "last.ckpt"
    old = {"global_step": 3, "weights": torch.arange(1000.0)}
    io.save_checkpoint(old, path)
    old_bytes = path.read_bytes()

    monkeypatch.setattr(torch, "save", _torch_save_that_dies_after(len(old_bytes) // 2))
    with pytest.raises(OSError, match="No space left on device"):
        io.save_checkpoint({"global_step": 4, "weights": torch.zeros(1000)}, path)
    monkeypatch.undo()

    assert path.read_bytes() == old_bytes
    restored = torch.load(path, weights_only=False)
    assert restored["global_step"] == 3 and torch.equal(restored["weights"], old["weights"])
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"], "no temporary file is left behind"


def test_dimlab_cli_installs_the_atomic_checkpoint_io(digits8, tmp_path):
    cli = DimlabCLI(args=fit_args(digits8, tmp_path)[1:], run=False)
    assert isinstance(cli.trainer.strategy.checkpoint_io, AtomicCheckpointIO)


class _CrashAt(L.Callback):
    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            raise RuntimeError(f"simulated crash at step {self.step}")


class _Steps(L.Callback):
    def __init__(self):
        self.seen = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.seen.append(trainer.global_step)


def _fit(root, max_steps, callbacks=(), ckpt_path=None):
    L.seed_everything(0)
    module = DiffusionModule(
        tiny_dim(), schedule="vp_sde", lr=1e-3, warmup_steps=0, ema_decay=0.9, adam_eps=1e-8
    )
    trainer = tiny_trainer(
        root,
        max_steps=max_steps,
        enable_checkpointing=True,
        plugins=[AtomicCheckpointIO()],
        callbacks=[
            ModelCheckpoint(dirpath=str(root / "ckpt"), every_n_train_steps=3, save_last=True),
            *callbacks,
        ],
    )
    trainer.fit(module, DataLoader(TinyImages(64), batch_size=4), ckpt_path=ckpt_path)
    return trainer


def test_a_crash_between_checkpoints_loses_only_the_steps_since_the_last(tmp_path):
    with pytest.raises(RuntimeError, match="simulated crash at step 5"):
        _fit(tmp_path, 8, [_CrashAt(5)])
    last = tmp_path / "ckpt" / "last.ckpt"
    assert torch.load(last, weights_only=False)["global_step"] == 3  # steps 4 and 5 are lost, nothing more

    steps = _Steps()
    trainer = _fit(tmp_path, 8, [steps], ckpt_path="last")
    assert steps.seen == [3, 4, 5, 6, 7], "the resumed run redoes steps 4 and 5 and goes on"
    assert trainer.global_step == 8


def _killed_mid_write(path) -> Path:
    """A process killed with SIGKILL while it writes ``path`` through ``atomic_write``: its temporary file."""
    code = (
        "import sys, time\n"
        "from dimlab.files import atomic_write\n"
        "with atomic_write(sys.argv[1], 'wb', fsync=True) as fh:\n"
        "    fh.write(b'half a checkpoint'); fh.flush(); print(fh.name, flush=True); time.sleep(60)\n"
    )
    writer = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True)
    temporary = Path(writer.stdout.readline().strip())
    writer.kill()
    writer.wait()
    assert temporary.is_file() and temporary.name.startswith(f".{path.name}.tmp-{writer.pid}-")
    return temporary


def test_remove_stale_temporaries_removes_those_of_dead_writers_only(tmp_path):
    stale = _killed_mid_write(tmp_path / "last.ckpt")
    live = tmp_path / f".step.ckpt.tmp-{os.getpid()}-0000abcd"  # a writer that is still running (this one)
    live.write_bytes(b"being written")
    other = tmp_path / "notes.tmp-1-2.txt"
    other.write_text("not an atomic_write temporary")
    assert remove_stale_temporaries(tmp_path, "*.ckpt") == [stale]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, other.name])


def test_dimlab_fit_removes_checkpoint_temporaries_of_a_killed_run_at_start_up(digits8, tmp_path, caplog):
    stale = _killed_mid_write(tmp_path / "ckpt" / "epoch=0-step=2.ckpt")
    assert main(fit_args(digits8, tmp_path, "--trainer.max_steps=1")) == 0
    assert not stale.exists()
    assert f"removed {stale}" in caplog.text
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["last.ckpt"]
