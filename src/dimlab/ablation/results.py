"""Collect each row's final numbers into ``results.csv`` / ``results.md`` (and a W&B table).

Numbers come from the row's ``summary.json`` (``dimlab.lit.callbacks.RunSummary``): ``global_step``,
``final_loss``, ``images_per_sec``, ``num_parameters`` and its ``metrics`` map (the trainer's last logged
metrics, e.g. ``fid/...``) and the matrix scorer's ``score.json``. A requested metric missing in both is looked up in the newest Lightning CSV log
(``metrics.csv``) under the row folder.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import wandb
from rich.table import Table

from dimlab.ablation.matrix import AblationMatrix, WandbSettings
from dimlab.ablation.runner import find_last_checkpoint, read_summary, wandb_run_id
from dimlab.ablation.scoring import read_score

BASE_COLUMNS = ("row", "status", "params", "global_step", "final_loss", "images_per_sec")


def _csv_log_metric(row_dir: Path, key: str) -> float | None:
    logs = [p for p in row_dir.rglob("metrics.csv") if p.is_file()]
    if not logs:
        return None
    latest = max(logs, key=lambda p: p.stat().st_mtime)
    value = None
    with open(latest, newline="") as handle:
        for record in csv.DictReader(handle):
            if record.get(key) not in (None, ""):
                value = record[key]
    return float(value) if value is not None else None


def _metric(summary: dict[str, Any] | None, row_dir: Path, key: str) -> float | None:
    score = read_score(row_dir)
    if score is not None and key in (score.get("metrics") or {}):
        return score["metrics"][key]
    if summary is not None:
        metrics = summary.get("metrics") or {}
        if key in metrics:
            return metrics[key]
        if key in summary:
            return summary[key]
    return _csv_log_metric(row_dir, key)


def row_status(row_dir: Path) -> str:
    """``finished``, ``incomplete`` (a summary short of ``max_steps``), ``started`` (a checkpoint only) or ``not run``."""
    summary = read_summary(row_dir)
    if summary is not None:
        return "finished" if summary.get("finished") is True else "incomplete"
    return "started" if find_last_checkpoint(row_dir) is not None else "not run"


def collect_results(
    matrix: AblationMatrix, output_dir: Path, param_counts: dict[str, int] | None = None
) -> list[dict[str, Any]]:
    """One record per matrix row (in matrix order) with the base columns and every ``matrix.metrics`` key.

    ``param_counts`` (row -> count, e.g. from the dry-run meta build) fills ``params`` for rows without a summary.
    """
    records = []
    for row in matrix.rows:
        row_dir = output_dir / row.name
        summary = read_summary(row_dir)
        params = (summary or {}).get("num_parameters")
        if params is None and param_counts:
            params = param_counts.get(row.name)
        record: dict[str, Any] = {
            "row": row.name,
            "status": row_status(row_dir),
            "params": params,
            "global_step": (summary or {}).get("global_step"),
            "final_loss": (summary or {}).get("final_loss"),
            "images_per_sec": (summary or {}).get("images_per_sec"),
        }
        for key in matrix.metrics:
            record[key] = _metric(summary, row_dir, key)
        records.append(record)
    return records


def columns_of(matrix: AblationMatrix) -> list[str]:
    """Column order of the results table."""
    return list(BASE_COLUMNS) + [m for m in matrix.metrics if m not in BASE_COLUMNS]


def format_cell(value: Any) -> str:
    """Human-readable cell: thousands separators for counts, 4 significant digits for floats, '-' for missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def write_results(
    records: list[dict[str, Any]], columns: list[str], output_dir: Path, title: str
) -> list[Path]:
    """Write ``results.csv`` (raw values) and ``results.md`` (a formatted table) into ``output_dir``."""
    output_dir.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = output_dir / "results.csv", output_dir / "results.md"
    with open(csv_path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for record in records:
            writer.writerow({c: "" if record.get(c) is None else record.get(c) for c in columns})
    lines = [f"# {title}", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(format_cell(r.get(c)) for c in columns) + " |" for r in records]
    md_path.write_text("\n".join(lines) + "\n")
    return [csv_path, md_path]


def rich_table(records: Iterable[dict[str, Any]], columns: list[str], title: str):
    """A ``rich.table.Table`` of the records for the terminal."""
    table = Table(title=title)
    for column in columns:
        table.add_column(column, justify="left" if column in ("row", "status") else "right")
    for record in records:
        table.add_row(*(format_cell(record.get(c)) for c in columns))
    return table


def log_results_to_wandb(
    settings: WandbSettings,
    matrix_name: str,
    records: list[dict[str, Any]],
    columns: list[str],
    output_dir: Path,
) -> None:
    """Log the results as one ``ablation/results`` table in a ``<group>-results`` run of the matrix's group.

    Offline mode (``wandb.mode: offline`` or ``WANDB_MODE=offline``) writes it under ``output_dir/wandb`` for a
    later ``wandb sync``.
    """
    group = settings.group or matrix_name
    run = wandb.init(
        project=settings.project,
        entity=settings.entity,
        group=group,
        name=f"{group}-results",
        id=wandb_run_id(f"{group}-results"),
        job_type="ablation-results",
        dir=str(output_dir),
        mode=settings.mode,
        tags=list(settings.tags) or None,
        resume="allow",
    )
    try:
        data = [[record.get(c) for c in columns] for record in records]
        run.log({"ablation/results": wandb.Table(columns=columns, data=data)})
    finally:
        run.finish()
