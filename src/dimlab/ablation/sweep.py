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
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import yaml

from dimlab.ablation.axes import BACKBONE_ARGS, BACKBONE_FLAGS
from dimlab.ablation.matrix import AblationMatrix, MatrixError


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


def _metric_goal(name: str) -> str:
    # FID and losses go down; accuracies (the digits demo's class consistency) go up.
    return "maximize" if "acc" in name.lower() else "minimize"


def _command_path(path: Path) -> str:
    try:
        return os.path.relpath(path, Path.cwd()) if path.is_relative_to(Path.cwd()) else str(path)
    except ValueError:
        return str(path)


def build_sweep(
    matrix: AblationMatrix, extra: dict[str, Any] | None = None
) -> tuple[dict[str, Any], list[str]]:
    """The sweep configuration (a dict for ``wandb.sweep`` or ``wandb sweep file.yaml``) and notes to show the user.

    ``extra`` holds ``--set`` overrides; they win over the matrix's ``overrides`` as in a normal run.
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
    if matrix.wandb is not None and "trainer.logger" not in parameters:
        # The run joins the sweep through the agent's WANDB_SWEEP_ID / WANDB_RUN_ID environment.
        parameters["trainer.logger"] = {"value": matrix.wandb.logger_class}
    for key, values in flags.items():
        parameters[key] = {"values": values}

    sweep: dict[str, Any] = {"name": f"{matrix.name}-sweep", "method": "grid"}
    if matrix.wandb is not None:
        sweep["project"] = matrix.wandb.project
        if matrix.wandb.entity:
            sweep["entity"] = matrix.wandb.entity
    if matrix.metrics:
        sweep["metric"] = {"name": matrix.metrics[0], "goal": _metric_goal(matrix.metrics[0])}
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
    return sweep, notes


def write_sweep(sweep: dict[str, Any], path: Path) -> Path:
    """Write the sweep YAML for ``wandb sweep <path>``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    return path
