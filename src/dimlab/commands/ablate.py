"""``dimlab ablate MATRIX.yaml``: dry-run, run (resumably) or emit a W&B sweep for an ablation matrix."""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from dimlab.ablation.axes import BACKBONE_ARGS
from dimlab.ablation.matrix import AblationMatrix, AblationRow, MatrixError, load_matrix
from dimlab.ablation.params import count_parameters
from dimlab.ablation.results import (
    collect_results,
    columns_of,
    log_results_to_wandb,
    rich_table,
    write_results,
)
from dimlab.ablation.runner import RowOutcome, cli_value, is_finished, run_row
from dimlab.ablation.scoring import score_row
from dimlab.ablation.sweep import build_sweep, write_sweep
from dimlab.console import make_console


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of ``dimlab ablate``."""
    parser = argparse.ArgumentParser(
        prog="dimlab ablate",
        description="Expand an ablation matrix (ablations/*.yaml) and train its rows one by one as `dimlab fit` "
        "runs. Finished rows are skipped and interrupted rows resume from last.ckpt, so rerunning the same "
        "command continues the matrix. Results go to <output_dir>/results.{md,csv}.",
    )
    parser.add_argument("matrix", type=Path, help="the matrix YAML")
    parser.add_argument(
        "--dry-run", action="store_true", help="print the expanded rows and parameter counts only"
    )
    parser.add_argument("--only", action="append", metavar="NAME", help="run only this row (repeatable)")
    parser.add_argument(
        "--emit-sweep", type=Path, metavar="SWEEP.yaml", help="write a W&B grid sweep and exit"
    )
    parser.add_argument("--output-dir", type=Path, help="where rows and results go (default: the matrix's)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra dotted override for every row, e.g. --set trainer.max_steps=200 (YAML value; repeatable)",
    )
    parser.add_argument(
        "--collect", action="store_true", help="only (re)write the results from existing rows"
    )
    parser.add_argument(
        "--quiet", action="store_true", help="do not echo the training output (still in fit.log)"
    )
    return parser


def parse_set(items: list[str]) -> dict[str, Any]:
    """``["a.b=3", "c=true"]`` -> ``{"a.b": 3, "c": True}`` (values read as YAML)."""
    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise MatrixError(f"--set {item!r}: expected KEY=VALUE, e.g. trainer.max_steps=200")
        overrides[key.strip()] = yaml.safe_load(value) if value.strip() else None
    return overrides


def _selected_rows(matrix: AblationMatrix, only: list[str] | None) -> list[AblationRow]:
    return [matrix.row(name) for name in only] if only else list(matrix.rows)


def _param_counts(rows: list[AblationRow], extra: dict[str, Any]) -> dict[str, int | str]:
    counts: dict[str, int | str] = {}
    for row in rows:
        try:
            counts[row.name] = count_parameters(row.base, {**row.overrides, **extra})
        except (ValueError, ImportError, RuntimeError) as err:
            counts[row.name] = f"error: {err}"
    return counts


def _dry_run(console: Console, matrix: AblationMatrix, rows: list[AblationRow], extra: dict[str, Any]) -> int:
    counts = _param_counts(rows, extra)
    run_wide = {**matrix.overrides, **extra}
    table = Table(
        title=f"{matrix.name}: {len(rows)} row(s), design {matrix.design}, output {matrix.output_dir}"
    )
    table.add_column("row", no_wrap=True)
    table.add_column("base", no_wrap=True)
    table.add_column("row overrides", overflow="fold")
    table.add_column("params", justify="right", no_wrap=True)
    for row in rows:
        own = {k: v for k, v in row.overrides.items() if k not in run_wide or run_wide[k] != v}
        shown = "\n".join(f"{_abbreviate(k)}={_display_value(v)}" for k, v in own.items()) or "-"
        count = counts[row.name]
        table.add_row(
            row.name, _short(row.base), shown, f"{count:,}" if isinstance(count, int) else str(count)
        )
    console.print(table)
    console.print("(backbone. = model.backbone.init_args.)")
    if run_wide:
        console.print("every row: " + " ".join(f"--{k}={cli_value(v)}" for k, v in run_wide.items()))
    return 1 if any(isinstance(c, str) for c in counts.values()) else 0


def _display_value(value: Any) -> str:
    if isinstance(value, dict) and "class_path" in value:
        args = ", ".join(f"{k}={cli_value(v)}" for k, v in (value.get("init_args") or {}).items())
        return f"{str(value['class_path']).rsplit('.', 1)[-1]}({args})"
    return cli_value(value)


def _abbreviate(key: str) -> str:
    return key.replace(BACKBONE_ARGS + ".", "backbone.")


def _short(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _report(console: Console, matrix: AblationMatrix, output_dir: Path, extra: dict[str, Any]) -> None:
    missing = [row for row in matrix.rows if not (output_dir / row.name / "summary.json").is_file()]
    counts = {k: v for k, v in _param_counts(missing, extra).items() if isinstance(v, int)}
    records = collect_results(matrix, output_dir, counts)
    columns = columns_of(matrix)
    title = f"Ablation {matrix.name} ({matrix.design})"
    paths = write_results(records, columns, output_dir, title)
    console.print(rich_table(records, columns, title))
    console.print("wrote " + ", ".join(str(p) for p in paths))
    if matrix.wandb is not None:
        log_results_to_wandb(matrix.wandb, matrix.name, records, columns, output_dir)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``dimlab ablate``; returns the process exit status."""
    args = build_parser().parse_args(argv)
    console = make_console()
    try:
        matrix = load_matrix(args.matrix, output_dir=args.output_dir)
        extra = parse_set(args.set)
        rows = _selected_rows(matrix, args.only)
        if args.emit_sweep is not None:
            sweep, notes = build_sweep(matrix, extra)
            write_sweep(sweep, args.emit_sweep)
            metric = sweep["metric"]
            console.print(f"wrote {args.emit_sweep} (metric {metric['name']}, {metric['goal']})")
            for note in notes:
                console.print(f"[yellow]{note}[/yellow]" if note.startswith("warning:") else f"  {note}")
            console.print(
                f"start it with: wandb sweep {args.emit_sweep}  then  wandb agent <entity/project/id>"
            )
            return 0
    except MatrixError as err:
        console.print(f"[red]dimlab ablate: {err}[/red]")
        return 2
    if args.dry_run:
        return _dry_run(console, matrix, rows, extra)

    output_dir = matrix.output_dir
    outcomes: list[RowOutcome] = []
    unscored: list[str] = []
    if not args.collect:
        previous = _interrupt_on_sigterm()
        try:
            for index, row in enumerate(rows, 1):
                console.rule(f"[bold]{matrix.name}[/bold] row {index}/{len(rows)}: {row.name}")
                outcome = run_row(matrix, row, output_dir, extra, echo=not args.quiet)
                outcomes.append(outcome)
                console.print(_describe(outcome, output_dir))
                scorable = matrix.scorer is not None and outcome.status in ("ok", "skipped")
                if scorable and not _score(console, matrix, output_dir / row.name):
                    unscored.append(row.name)
        except KeyboardInterrupt:
            console.print("[yellow]interrupted: rerun the same command to resume[/yellow]")
            _report(console, matrix, output_dir, extra)
            return 130
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
    if args.collect and matrix.scorer is not None:
        for row in rows:
            if is_finished(output_dir / row.name) and not _score(console, matrix, output_dir / row.name):
                unscored.append(row.name)
    _report(console, matrix, output_dir, extra)
    bad = [o.row for o in outcomes if o.status in ("failed", "incomplete")]
    if bad:
        console.print(f"[red]rows not finished: {', '.join(bad)} (see <row>/fit.log; rerun to resume)[/red]")
    if unscored:
        console.print(f"[red]scorer failed on: {', '.join(unscored)} (rerun with --collect to retry)[/red]")
    return 1 if bad or unscored else 0


def _interrupt_on_sigterm():
    """Turn SIGTERM (a scheduler or ``kill``) into KeyboardInterrupt so the running row's child is stopped too."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, handler)


def _score(console: Console, matrix: AblationMatrix, row_dir: Path) -> bool:
    """Run the matrix scorer on a finished row; False (after printing why) if it failed."""
    assert matrix.scorer is not None
    try:
        metrics = score_row(matrix.scorer, row_dir)
    except Exception as err:  # a scorer failure must not lose the other rows' results
        console.print(
            f"[red]{row_dir.name}: scorer {matrix.scorer.callable} failed: {type(err).__name__}: {err}[/red]"
        )
        return False
    console.print(f"{row_dir.name}: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
    return True


def _describe(outcome: RowOutcome, output_dir: Path) -> str:
    if outcome.status == "skipped":
        return f"{outcome.row}: already finished, skipped"
    resumed = f", resumed from {outcome.resumed_from}" if outcome.resumed_from else ""
    log = output_dir / outcome.row / "fit.log"
    return f"{outcome.row}: {outcome.status} (exit {outcome.returncode}, {outcome.seconds:.0f} s{resumed}; log {log})"
