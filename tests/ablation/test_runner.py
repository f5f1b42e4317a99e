"""The resumable runner end to end: real ``python -m dimlab fit`` subprocesses on tiny digit shards.

Slow (four short CPU fits, most of it interpreter start-up): one row is trained alone (the "interrupted"
matrix), the whole matrix is rerun (the finished row is skipped, the other trains), then a raised budget
resumes the first row from its ``last.ckpt``.
"""

from __future__ import annotations

import csv
import json

import pytest
import yaml

from dimlab.ablation.runner import COMMAND_FILE, LOG_FILE, find_last_checkpoint, read_summary
from dimlab.commands.ablate import main

from .conftest import tiny_experiment

pytestmark = pytest.mark.slow


@pytest.fixture
def digits_matrix(tmp_path, write_matrix, digit_shards):
    shards = digit_shards(size=16)
    experiment = tmp_path / "experiments" / "tiny.yaml"
    experiment.parent.mkdir(parents=True)
    experiment.write_text(yaml.safe_dump(tiny_experiment(train_shards=str(shards))))
    return write_matrix(
        {
            "name": "tiny",
            "base": "../experiments/tiny.yaml",
            "output_dir": str(tmp_path / "out"),
            "overrides": {"trainer.max_steps": 2},
            "design": [{"name": "with_skips"}, {"name": "without_skips", "long_skips": False}],
            "wandb": {"project": "dimlab-test", "mode": "offline"},
            "metrics": ["train/loss", "class_consistency"],
            # The demo's metric, for real: samples of the tiny model scored by an SVM trained on digits.
            "scorer": {
                "callable": "dimlab.demos.digits.score_checkpoint",
                "args": {"per_class": 2, "steps": 3},
            },
        }
    )


def _argv_of(row_dir):
    return json.loads((row_dir / COMMAND_FILE).read_text())["argv"]


def test_rows_are_skipped_when_finished_and_resumed_from_last_ckpt(digits_matrix, tmp_path, capsys):
    out = tmp_path / "out"

    # 1. Only the first row runs: the matrix is left half done, as after an interruption.
    assert main([str(digits_matrix), "--only", "with_skips", "--quiet"]) == 0
    first = read_summary(out / "with_skips")
    assert first["finished"] is True and first["global_step"] == 2
    assert not (out / "without_skips").exists()
    summary_mtime = (out / "with_skips" / "summary.json").stat().st_mtime_ns
    argv = _argv_of(out / "with_skips")
    assert "--model.backbone.init_args.long_skip=true" not in argv  # design rows without axes set nothing
    assert f"--trainer.default_root_dir={out / 'with_skips'}" in argv

    # 2. Rerunning the matrix skips the finished row and trains the other one.
    capsys.readouterr()
    assert main([str(digits_matrix), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "with_skips: already finished, skipped" in printed
    assert (out / "with_skips" / "summary.json").stat().st_mtime_ns == summary_mtime
    assert (out / "with_skips" / LOG_FILE).read_text().count("$ ") == 1
    second = read_summary(out / "without_skips")
    assert second["finished"] is True
    assert "--model.backbone.init_args.long_skip=false" in _argv_of(out / "without_skips")
    assert second["num_parameters"] < first["num_parameters"]

    with open(out / "results.csv", newline="") as handle:
        rows = {r["row"]: r for r in csv.DictReader(handle)}
    assert set(rows) == {"with_skips", "without_skips"}
    assert all(r["status"] == "finished" for r in rows.values())
    assert int(rows["without_skips"]["params"]) < int(rows["with_skips"]["params"])
    assert rows["with_skips"]["train/loss"] != ""
    assert all(0.0 <= float(r["class_consistency"]) <= 1.0 for r in rows.values())
    # Each row logged to its own offline W&B run, with a stable id, and the table went to a results run.
    assert list((out / "with_skips").glob("wandb/offline-run-*-tiny-with_skips"))
    assert list(out.glob("wandb/offline-run-*-tiny-results"))
    assert "| with_skips | finished |" in (out / "results.md").read_text()

    # 3. A larger budget continues the first row from its last checkpoint instead of starting over.
    assert main([str(digits_matrix), "--only", "with_skips", "--set", "trainer.max_steps=3", "--quiet"]) == 0
    resumed_argv = _argv_of(out / "with_skips")
    assert any(a.startswith("--ckpt_path=") and a.endswith("last.ckpt") for a in resumed_argv)
    assert "--trainer.max_steps=3" in resumed_argv
    assert read_summary(out / "with_skips")["global_step"] == 3
    # ... and the scorer ran again on the new checkpoint.
    last = find_last_checkpoint(out / "with_skips")
    score = json.loads((out / "with_skips" / "score.json").read_text())
    assert (score["checkpoint"], score["mtime_ns"]) == (str(last), last.stat().st_mtime_ns)


def test_a_failing_row_is_reported_and_does_not_count_as_finished(digits_matrix, tmp_path, capsys):
    out = tmp_path / "out"
    status = main(
        [
            str(digits_matrix),
            "--only",
            "without_skips",
            "--set",
            "model.backbone.init_args.depth=-1",
            "--quiet",
        ]
    )
    assert status == 1
    assert "rows not finished: without_skips" in capsys.readouterr().out.replace("\n", " ")
    assert read_summary(out / "without_skips") is None
    assert (
        "Traceback" in (out / "without_skips" / LOG_FILE).read_text()
        or "error" in (out / "without_skips" / LOG_FILE).read_text().lower()
    )
