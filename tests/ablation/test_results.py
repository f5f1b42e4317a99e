"""Collecting rows' summaries (and CSV logs) into results.csv / results.md."""

from __future__ import annotations

import csv
import json

from dimlab.ablation.matrix import WandbSettings, load_matrix
from dimlab.ablation.results import collect_results, columns_of, log_results_to_wandb, write_results
from dimlab.ablation.runner import is_finished


def _summary(row_dir, **fields):
    row_dir.mkdir(parents=True)
    (row_dir / "summary.json").write_text(json.dumps(fields))


def test_results_tables_from_summaries_and_csv_logs(experiment, write_matrix, tmp_path):
    out = tmp_path / "out"
    matrix = load_matrix(
        write_matrix(
            {
                "base": "../experiments/tiny.yaml",
                "output_dir": str(out),
                "design": [{"name": "a"}, {"name": "b", "long_skips": False}, {"name": "c"}, {"name": "d"}],
                "metrics": ["fid/fid", "digits/accuracy"],
            }
        )
    )
    _summary(
        out / "a",
        global_step=10,
        final_loss=0.25,
        images_per_sec=100.0,
        num_parameters=1234,
        finished=True,
        metrics={"fid/fid": 12.5},
    )
    _summary(
        out / "b", global_step=4, final_loss=0.5, images_per_sec=80.0, num_parameters=999, finished=False
    )
    # b's accuracy is only in its Lightning CSV log (newest value wins over earlier rows).
    log = out / "b" / "lightning_logs" / "version_0" / "metrics.csv"
    log.parent.mkdir(parents=True)
    log.write_text("step,digits/accuracy,train/loss\n1,0.5,\n2,,0.3\n3,0.75,\n")
    (out / "c" / "checkpoints").mkdir(parents=True)
    (out / "c" / "checkpoints" / "last.ckpt").write_bytes(b"x")

    records = collect_results(matrix, out, param_counts={"d": 42})
    by_row = {r["row"]: r for r in records}
    assert [r["row"] for r in records] == ["a", "b", "c", "d"]
    assert by_row["a"]["status"] == "finished" and by_row["a"]["fid/fid"] == 12.5
    assert by_row["a"]["digits/accuracy"] is None
    assert by_row["b"]["status"] == "incomplete" and by_row["b"]["digits/accuracy"] == 0.75
    assert by_row["c"]["status"] == "started"
    assert by_row["d"]["status"] == "not run" and by_row["d"]["params"] == 42

    columns = columns_of(matrix)
    csv_path, md_path = write_results(records, columns, out, "tiny")
    with open(csv_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == columns
    assert rows[0]["params"] == "1234" and rows[0]["fid/fid"] == "12.5" and rows[0]["digits/accuracy"] == ""
    md = md_path.read_text().splitlines()
    assert md[0] == "# tiny"
    assert md[2] == "| " + " | ".join(columns) + " |"
    assert md[4].startswith("| a | finished | 1,234 | 10 | 0.25 | 100 | 12.5 | - |")
    assert len(md) == 4 + len(records)


def test_finished_depends_on_the_requested_budget(tmp_path):
    _summary(tmp_path / "r", global_step=10, finished=True)
    assert is_finished(tmp_path / "r")
    assert is_finished(tmp_path / "r", max_steps=10)
    assert not is_finished(tmp_path / "r", max_steps=20)
    _summary(tmp_path / "s", global_step=10, finished=False)
    assert not is_finished(tmp_path / "s")
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "summary.json").write_text("{truncated")
    assert not is_finished(tmp_path / "t")


def test_results_table_is_logged_to_wandb_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    settings = WandbSettings(project="dimlab-test", group="g.1", mode="offline")
    records = [{"row": "a", "params": 10, "fid/fid": None}, {"row": "b", "params": 7, "fid/fid": 3.5}]
    log_results_to_wandb(settings, "m", records, ["row", "params", "fid/fid"], tmp_path)
    tables = list(
        tmp_path.glob("wandb/offline-run-*-g-1-results/files/media/table/ablation/results_*.table.json")
    )
    assert len(tables) == 1
    table = json.loads(tables[0].read_text())
    assert table["columns"] == ["row", "params", "fid/fid"]
    assert table["data"] == [["a", 10, None], ["b", 7, 3.5]]
