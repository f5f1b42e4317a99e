"""Run matrix rows one after another as ordinary ``dimlab fit`` subprocesses, resumably.

Each row trains in ``<output_dir>/<row>`` (its ``trainer.default_root_dir``). A row whose ``summary.json`` says
``finished`` at (at least) the requested ``trainer.max_steps`` is skipped; a row with a ``last.ckpt`` but no finished summary is resumed with ``--ckpt_path``.
A subprocess per row (rather than one process looping over Trainers) gives each row a clean CUDA context, RNG
state and logger, and is exactly the command a person would type to rerun a single row.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from omegaconf import OmegaConf

from dimlab.ablation.matrix import AblationMatrix, AblationRow, WandbSettings

SUMMARY_FILE = "summary.json"
COMMAND_FILE = "ablation_command.json"
LOG_FILE = "fit.log"


def cli_value(value: Any) -> str:
    """Format an override value the way jsonargparse reads it back (``true``, ``null``, JSON lists/maps)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, list | tuple | dict):
        return json.dumps(value)
    return str(value)


def read_summary(row_dir: Path) -> dict[str, Any] | None:
    """The row's ``summary.json`` (written by ``dimlab.lit.callbacks.RunSummary``), or None if absent/corrupt."""
    path = row_dir / SUMMARY_FILE
    try:
        summary = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return summary if isinstance(summary, dict) else None


def is_finished(row_dir: Path, max_steps: int | None = None) -> bool:
    """True when the row's summary says it reached its ``max_steps`` and, when given, at least ``max_steps``.

    The second condition makes a raised budget (e.g. a larger ``ABLATION_STEPS``) continue finished rows from
    their ``last.ckpt`` instead of skipping them.
    """
    summary = read_summary(row_dir)
    if not summary or summary.get("finished") is not True:
        return False
    step = summary.get("global_step")
    return max_steps is None or (isinstance(step, int) and step >= max_steps)


def requested_max_steps(row: AblationRow, extra: dict[str, Any] | None = None) -> int | None:
    """The ``trainer.max_steps`` the row will run with (overrides first, then its base YAML), if set."""
    overrides = {**row.overrides, **(extra or {})}
    if "trainer.max_steps" in overrides:
        value = overrides["trainer.max_steps"]
    else:
        try:
            value = OmegaConf.select(OmegaConf.load(row.base), "trainer.max_steps")
        except Exception:  # an unreadable base fails loudly in the fit itself
            value = None
    try:
        return int(value) if value is not None and int(value) > 0 else None
    except (TypeError, ValueError):
        return None


def find_last_checkpoint(row_dir: Path) -> Path | None:
    """The newest ``last.ckpt`` under the row folder (``checkpoints/last.ckpt`` or a logger's version folder)."""
    preferred = row_dir / "checkpoints" / "last.ckpt"
    if preferred.is_file():
        return preferred
    found = [p for p in row_dir.rglob("last.ckpt") if p.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def wandb_run_id(text: str) -> str:
    """A W&B run id from ``text``: W&B ids allow letters, digits, ``-`` and ``_`` only (64 characters kept)."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", text)[:64]


def wandb_overrides(
    settings: WandbSettings, matrix_name: str, row: AblationRow, row_dir: Path
) -> dict[str, Any]:
    """Logger overrides that send the row to W&B as run ``<row>`` in the matrix's group.

    The run id is derived from the group and row so that a resumed row continues the same W&B run.
    """
    prefix = "trainer.logger.init_args"
    overrides: dict[str, Any] = {
        "trainer.logger": settings.logger_class,
        f"{prefix}.project": settings.project,
        f"{prefix}.name": row.name,
        f"{prefix}.group": settings.group or matrix_name,
        f"{prefix}.save_dir": str(row_dir),
        f"{prefix}.id": wandb_run_id(f"{settings.group or matrix_name}-{row.name}"),
        f"{prefix}.job_type": "ablation",
    }
    if settings.entity:
        overrides[f"{prefix}.entity"] = settings.entity
    if settings.mode == "offline":
        overrides[f"{prefix}.offline"] = True
    if settings.tags:
        overrides[f"{prefix}.tags"] = list(settings.tags)
    return overrides


def fit_command(
    matrix: AblationMatrix, row: AblationRow, output_dir: Path, extra: dict[str, Any] | None = None
) -> list[str]:
    """The ``python -m dimlab fit`` argv for ``row`` (without ``--ckpt_path``; see :func:`run_row`)."""
    row_dir = output_dir / row.name
    overrides = {**row.overrides, **(extra or {}), "trainer.default_root_dir": str(row_dir)}
    if matrix.wandb is not None:
        overrides.update(wandb_overrides(matrix.wandb, matrix.name, row, row_dir))
    argv = [sys.executable, "-m", "dimlab", "fit", "--config", str(row.base)]
    return argv + [f"--{key}={cli_value(value)}" for key, value in overrides.items()]


@dataclass
class RowOutcome:
    """What happened to one row in this invocation.

    ``skipped`` (already finished), ``ok`` (trained to ``max_steps``), ``incomplete`` (the child exited cleanly
    without reaching ``max_steps``) or ``failed`` (non-zero exit).
    """

    row: str
    status: str
    returncode: int | None = None
    resumed_from: Path | None = None
    seconds: float = 0.0


def _tee(process: subprocess.Popen, log: TextIO, echo: bool) -> None:
    assert process.stdout is not None
    for line in process.stdout:
        log.write(line)
        if echo:
            sys.stdout.write(line)
            sys.stdout.flush()


def run_row(
    matrix: AblationMatrix,
    row: AblationRow,
    output_dir: Path,
    extra: dict[str, Any] | None = None,
    echo: bool = True,
) -> RowOutcome:
    """Train one row unless it is finished; resume it from ``last.ckpt`` if an earlier attempt was cut off.

    The child's output goes to ``<row>/fit.log`` (appended across attempts) and, with ``echo``, to stdout.
    """
    row_dir = output_dir / row.name
    max_steps = requested_max_steps(row, extra)
    if is_finished(row_dir, max_steps):
        return RowOutcome(row.name, "skipped")
    row_dir.mkdir(parents=True, exist_ok=True)
    argv = fit_command(matrix, row, output_dir, extra)
    checkpoint = find_last_checkpoint(row_dir)
    if checkpoint is not None:
        argv.append(f"--ckpt_path={checkpoint}")
    (row_dir / COMMAND_FILE).write_text(json.dumps({"argv": argv, "matrix": str(matrix.path)}, indent=2))

    env = dict(os.environ)
    # A W&B run in this process (the results table) leaves WANDB_SERVICE pointing at its service; a child that
    # inherits it joins that service, which can refuse the row's run id as "in use". Each row gets its own.
    env.pop("WANDB_SERVICE", None)
    if matrix.wandb is not None and matrix.wandb.mode is not None:
        env["WANDB_MODE"] = matrix.wandb.mode
    start = time.perf_counter()
    with open(row_dir / LOG_FILE, "a") as log:
        log.write(f"\n$ {' '.join(argv)}\n")
        log.flush()
        process = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, bufsize=1
        )
        try:
            _tee(process, log, echo)
            returncode = process.wait()
        except BaseException:
            process.terminate()
            process.wait()
            raise
    if returncode != 0:
        status = "failed"
    else:
        status = "ok" if is_finished(row_dir, max_steps) else "incomplete"
    return RowOutcome(
        row.name,
        status,
        returncode=returncode,
        resumed_from=checkpoint,
        seconds=time.perf_counter() - start,
    )
