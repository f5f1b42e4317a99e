"""Emit a W&B sweep (grid) over a matrix's DiM switches that runs plain ``dimlab fit``.

Choice made here: **one sweep parameter per DiM constructor flag**, named by its jsonargparse path
(``model.backbone.init_args.multi_scan``, ``.long_skip``, ``.line_pad``, ``.cond_separator``, ``.local_enhance``),
each with the values that flag takes in the matrix's design rows. A W&B grid is the cartesian product of its
parameters and cannot tie two parameters, so:

* ``padding_tokens: [true, false]`` becomes ``line_pad: [true, false]`` x ``cond_separator: [true, false]``;
  the grid then also runs the two mixed settings (each half of the paper's PT component alone);
* a ``leave_one_out`` or ``rows`` design becomes the full factorial of the values its rows use (a superset);
* ``extra_rows`` (other bases such as U-ViT) are not in the sweep.

Every sweep run gets its own ``trainer.default_root_dir`` (``<output_dir>/sweep/<W&B run id>``) through a
constant ``config`` parameter: the agent passes it as ``--config={"trainer": {"default_root_dir": ...}}``, a
config *string* that jsonargparse reads in omegaconf mode, resolving ``${oc.env:WANDB_RUN_ID}`` (the agent sets
that variable for each run). Without it all runs would share the base config's folder and checkpoints.

Use ``dimlab ablate`` for the exact design. The sweep is for spreading a factorial over many W&B agents.
Run-wide overrides become constant parameters (``{value: ...}``). The agent appends them as
``--key=value`` with Python formatting (``True``/``False``), which jsonargparse parses; ``null`` cannot be
passed that way (it would arrive as the string ``None``), so it is rejected.

A sweep only sees what its runs log to W&B, so: the sweep's ``metric`` is the first of the matrix's ``metrics``
that a ``dimlab fit`` run with these settings logs (:mod:`dimlab.ablation.fit_metrics`), else the most
informative metric it does log, with a warning (the digits matrix's ``class_consistency`` comes from its scorer,
which only ``dimlab ablate`` runs); and ``trainer.logger`` is always a ``WandbLogger``, replacing (with a
warning) any other logger or ``false`` from the matrix. Notes that start with ``warning:`` name what the sweep
cannot do as the matrix asks.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import yaml

from dimlab.ablation.axes import BACKBONE_ARGS, BACKBONE_FLAGS
from dimlab.ablation.fit_metrics import TRAIN_LOSS, logged_metrics
from dimlab.ablation.matrix import DEFAULT_WANDB_LOGGER, AblationMatrix, MatrixError


def _flag_values(matrix: AblationMatrix) -> dict[str, list[Any]]:
    values: dict[str, list[Any]] = {}
    for row in matrix.rows:
        if row.extra:
            continue
        for flag in BACKBONE_FLAGS:
            key = f"{BACKBONE_ARGS}.{flag}"
            if key in row.overrides and row.overrides[key] not in values.setdefault(key, []):
                values[key].append(row.overrides[key])
    return {key: vals for key, vals in values.items() if vals}


def _sweep_metric(matrix: AblationMatrix, logged: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """The sweep's ``metric`` (a matrix metric the runs log, else the best logged one) and warnings about it."""
    chosen = next((name for name in matrix.metrics if name in logged), next(iter(logged)))
    warnings = []
    for name in matrix.metrics:
        if name in logged:
            break
        origin = (
            f"it comes from the matrix scorer {matrix.scorer.callable}, which only `dimlab ablate` runs, after training"
            if matrix.scorer is not None
            else f"a run with these settings logs {', '.join(logged)}"
        )
        proxy = (
            " (the last logged step's loss, a rough proxy: an FIDCallback in the overrides gives a quality metric)"
            if chosen == TRAIN_LOSS
            else ""
        )
        warnings.append(
            f"warning: metric {name!r} is not logged by the sweep's `dimlab fit` runs ({origin}); "
            f"the sweep's metric is {chosen} ({logged[chosen]}) instead{proxy}"
        )
    return {"name": chosen, "goal": logged[chosen]}, warnings


def _is_wandb_logger(value: Any) -> bool:
    target = value.get("class_path") if isinstance(value, dict) else value
    return isinstance(target, str) and target.rsplit(".", 1)[-1] == "WandbLogger"


def _sweep_logger(matrix: AblationMatrix, constants: dict[str, Any]) -> tuple[Any, list[str]]:
    """The run's ``trainer.logger``: a WandbLogger whatever the matrix says, since the sweep reads W&B only."""
    current = constants.get("trainer.logger")
    if _is_wandb_logger(current):
        return current, []
    logger = matrix.wandb.logger_class if matrix.wandb is not None else DEFAULT_WANDB_LOGGER
    if "trainer.logger" not in constants:
        return logger, []
    return logger, [
        f"warning: trainer.logger: {json.dumps(current)} from the matrix overrides is replaced by {logger}: a sweep run "
        "reports its metric to the sweep only through W&B"
    ]


def _command_path(path: Path) -> str:
    try:
        return os.path.relpath(path, Path.cwd()) if path.is_relative_to(Path.cwd()) else str(path)
    except ValueError:
        return str(path)


def build_sweep(
    matrix: AblationMatrix, extra: dict[str, Any] | None = None
) -> tuple[dict[str, Any], list[str]]:
    """The sweep configuration (a dict for ``wandb.sweep`` or ``wandb sweep file.yaml``) and notes to show the user.

    ``extra`` holds ``--set`` overrides; they win over the matrix's ``overrides`` as in a normal run. Notes that
    start with ``warning:`` say where the sweep departs from the matrix (its metric, its logger).
    """
    flags = _flag_values(matrix)
    constants = {**matrix.overrides, **(extra or {})}
    constants = {k: v for k, v in constants.items() if k not in flags}
    parameters: dict[str, Any] = {}
    for key, value in constants.items():
        if value is None:
            raise MatrixError(
                f"{matrix.path}: overrides.{key}: null cannot go through a W&B sweep (the agent passes it as the "
                "string 'None'); drop it or give a value"
            )
        parameters[key] = {"value": value}
    run_dir = f"{matrix.output_dir.as_posix()}/sweep/${{oc.env:WANDB_RUN_ID}}"
    if "trainer.default_root_dir" not in parameters:
        parameters["config"] = {"value": json.dumps({"trainer": {"default_root_dir": run_dir}})}
    # The run joins the sweep through the agent's WANDB_SWEEP_ID / WANDB_RUN_ID environment.
    logger, warnings = _sweep_logger(matrix, constants)
    parameters["trainer.logger"] = {"value": logger}
    for key, values in flags.items():
        parameters[key] = {"values": values}

    sweep: dict[str, Any] = {"name": f"{matrix.name}-sweep", "method": "grid"}
    if matrix.wandb is not None:
        sweep["project"] = matrix.wandb.project
        if matrix.wandb.entity:
            sweep["entity"] = matrix.wandb.entity
    sweep["metric"], metric_warnings = _sweep_metric(matrix, logged_metrics(matrix.base, constants))
    warnings += metric_warnings
    sweep["parameters"] = parameters
    sweep["command"] = [
        "${env}",
        "python",
        "-m",
        "dimlab",
        "fit",
        "--config",
        _command_path(matrix.base),
        "${args}",
    ]

    grid_size = math.prod(len(v) for v in flags.values()) if flags else 1
    design_rows = sum(not r.extra for r in matrix.rows)
    notes = [f"grid of {grid_size} runs over {', '.join(k.rsplit('.', 1)[1] for k in flags) or 'no flags'}"]
    if grid_size != design_rows:
        notes.append(
            f"design {matrix.design!r} has {design_rows} rows; a W&B grid is a full factorial, so the sweep runs "
            f"{grid_size} (`dimlab ablate` runs exactly the design)"
        )
    if any("padding_tokens" in r.axes for r in matrix.rows if not r.extra):
        notes.append("padding_tokens drives line_pad and cond_separator; the grid varies them independently")
    skipped = [r.name for r in matrix.rows if r.extra]
    if skipped:
        notes.append(
            f"extra rows not in the sweep (run them with `dimlab ablate --only`): {', '.join(skipped)}"
        )
    if matrix.wandb is None:
        notes.append("no wandb: section in the matrix: the sweep goes to your default W&B entity and project")
    return sweep, notes + warnings


def write_sweep(sweep: dict[str, Any], path: Path) -> Path:
    """Write the sweep YAML for ``wandb sweep <path>``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    return path
