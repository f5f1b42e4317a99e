"""What ``python -m dimlab fit`` prints and writes for a user reading its log (stdout is a file here, not a
terminal): a last line naming the checkpoint and summary, a progress bar that suits ``max_steps``, no warning
about the EMA copy's eval mode, and ``summary.json`` metrics that say which step they belong to."""

from __future__ import annotations

import json

import pytest
from reliability_cli import dimlab_fit

# Validation and the skipped-sample count (every log_every_n_steps) happen at step 4; the run ends at step 6.
RUN = (
    "--trainer.max_steps=6",
    "--trainer.val_check_interval=4",
    "--trainer.limit_val_batches=1",
    "--trainer.log_every_n_steps=4",
    "--checkpoint.every_n_train_steps=4",
)


@pytest.fixture(scope="module")
def finished_run(digits8, tmp_path_factory):
    """(run folder, output) of one short ``dimlab fit``."""
    root = tmp_path_factory.mktemp("fit_output") / "run"
    proc = dimlab_fit(digits8, root, *RUN)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output
    return root, output


def test_the_last_line_says_where_the_checkpoint_and_the_summary_are(finished_run):
    root, output = finished_run
    last = output.strip().splitlines()[-1]
    # Lightning's last.ckpt copies the newest every_n_train_steps checkpoint (step 4 of 6 here): the line says so
    assert last == (
        f"dimlab fit: stopped at step 6; last checkpoint {root / 'ckpt' / 'last.ckpt'} (step 4: the steps after it "
        "are in no checkpoint; make max_steps a multiple of checkpoint.every_n_train_steps); "
        f"summary {root / 'summary.json'}"
    ), output


def test_the_progress_bar_shows_steps_not_a_negative_epoch_total(finished_run):
    _, output = finished_run
    assert "/-2" not in output
    bar = [line for line in output.splitlines() if line.startswith("Epoch 0 ")]
    assert bar and "step: 6/6" in bar[-1], output


def test_no_warning_about_the_ema_copy_in_eval_mode(finished_run):
    _, output = finished_run
    assert "module(s) in eval mode" not in output


def test_summary_metrics_say_which_step_they_were_logged_at(finished_run):
    root, _ = finished_run
    summary = json.loads((root / "summary.json").read_text())
    assert summary["global_step"] == 6
    steps = summary["metrics_step"]
    assert set(steps) == set(summary["metrics"])
    assert steps["train/loss"] == steps["train/lr"] == steps["perf/images_per_sec"] == 6
    assert steps["val/loss_ema"] == 4 and steps["data/skipped_samples"] == 4
