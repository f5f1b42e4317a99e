"""Pre-emption through the command line: ``python -m dimlab fit`` with ``PreemptionCheckpoint`` gets a real SIGTERM
from outside mid-run, exits cleanly with last.ckpt, and ``--ckpt_path=last`` continues at the same step and data
position."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from reliability_cli import dimlab_fit, load_checkpoint

PREEMPTIBLE = (
    "--checkpoint.every_n_train_steps=2",
    "--trainer.callbacks+=dimlab.lit.faults.PreemptionCheckpoint",
)


def _data_position(ckpt: Path) -> dict:
    state = load_checkpoint(ckpt)
    return {"step": state["global_step"], **state["ShardDataModule"]}


def test_dimlab_fit_subprocess_sigterm_then_resume_with_ckpt_path_last(digits8, tmp_path):
    root = tmp_path / "run"
    proc = dimlab_fit(digits8, root, *PREEMPTIBLE, "--trainer.max_steps=100000")
    try:
        # last.ckpt (save_last) appears with the step-2 checkpoint and stays; epoch=0-step=2.ckpt itself is
        # deleted again at step 4, a window shorter than a poll interval at times
        proc.wait_until((root / "ckpt" / "last.ckpt").exists, "checkpoint at step 2")
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.stop()
    assert proc.returncode == 128 + signal.SIGTERM, output  # pre-empted: not finished
    assert "received SIGTERM" in output
    stopped = _data_position(root / "ckpt" / "last.ckpt")
    k = stopped["step"]
    assert 2 <= k < 100000 and stopped["epoch"] == 0 and stopped["batches_consumed"] == k

    proc = dimlab_fit(digits8, root, *PREEMPTIBLE, f"--trainer.max_steps={k + 2}", "--ckpt_path=last")
    output, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, output
    assert "Restoring states from the checkpoint path" in output and "last.ckpt" in output
    assert json.loads((root / "summary.json").read_text())["global_step"] == k + 2
    # the newest checkpoint of the resumed run: its stream continued from batch k (a restart would hold step - k)
    resumed = _data_position(root / "ckpt" / "last.ckpt")
    assert resumed["step"] > k and resumed["batches_consumed"] == resumed["step"], (stopped, resumed)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGUSR1], ids=lambda s: s.name)
def test_a_signal_to_the_whole_process_group_with_loader_workers_saves_and_exits_128_plus_signal(
    digits8, tmp_path, sig
):
    # scancel, timeout and a terminal's Ctrl-C signal every process of the group: the DataLoader workers too.
    root = tmp_path / "run"
    proc = dimlab_fit(digits8, root, *PREEMPTIBLE, "--data.num_workers=2", "--trainer.max_steps=100000")
    try:
        proc.wait_until((root / "ckpt" / "last.ckpt").exists, "checkpoint at step 2")
        os.killpg(proc.pid, sig)  # the child leads its own session and process group
        output, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.stop()
    assert proc.returncode == 128 + sig, output
    assert "DataLoader worker" not in output, output
    assert output.count(f"received {sig.name}") == 1, output  # the main process alone handles it
    assert f"saved {root / 'ckpt' / 'last.ckpt'}" in output and "s after the signal); stopping" in output
    stopped = _data_position(root / "ckpt" / "last.ckpt")
    assert 2 <= stopped["step"] < 100000 and stopped["batches_consumed"] == stopped["step"]
