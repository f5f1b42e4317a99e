"""Load, validate and expand an ablation matrix file into named runs.

A matrix is plain YAML read with omegaconf (so ``${...}`` interpolation, including ``${oc.env:VAR,default}``,
works). Keys::

    name: cifar10_dim_s2            # optional; defaults to the file stem; the W&B group by default
    base: experiments/cifar10/dim_s2.yaml   # relative to the matrix file, the repo root, or the cwd
    output_dir: runs/ablations/cifar10      # relative to the cwd; --output-dir overrides it
    wandb: {project: dimlab, entity: null, group: null, mode: offline}   # optional
    overrides: {trainer.max_steps: 100000, data.batch_size: 128}         # every row; nested maps are flattened
    axes: {multi_scan: [4, 1], long_skips: [true, false], ...}           # see dimlab.ablation.axes
    design: leave_one_out            # or full, or rows (with `rows:`), or the list of rows itself
    rows: [{name: a, long_skips: false, overrides: {...}}]
    extra_rows: [{name: uvit_s2, base: experiments/cifar10/uvit_s2.yaml, overrides: {...}}]
    metrics: [fid/10k_dpmpp50_cfg0]
    scorer: {callable: dimlab.demos.digits.score_checkpoint, args: {per_class: 10}}   # optional, see below

``scorer`` names a function ``f(checkpoint_path, **args) -> dict`` run on each finished row's ``last.ckpt``
after training (in the ``dimlab ablate`` process); its numbers land in ``<row>/score.json`` and can be listed
under ``metrics``. The digits matrix uses it for the demo's class-consistency accuracy.

Precedence of a row's overrides (later wins): matrix ``overrides``, the row's axis values, the row's own
``overrides``, then ``dimlab ablate --set``. In design rows every axis listed under ``axes`` is set (an axis the
row does not name takes its first, "full model", value); extra rows set only the axes they name.
"""

from __future__ import annotations

import importlib
import itertools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from dimlab.ablation.axes import (
    AXES,
    AXIS_ORDER,
    Axis,
    axis_for,
    axis_overrides,
    known_axis,
    normalize_axis_value,
)

DESIGNS = ("leave_one_out", "full", "rows")
_TOP_KEYS = {"name", "description", "base", "output_dir", "wandb", "overrides", "axes", "design", "rows"}
_TOP_KEYS |= {"extra_rows", "metrics", "scorer"}
_ROW_KEYS = {"name", "description", "base", "overrides"}
_WANDB_KEYS = {"enabled", "project", "entity", "group", "mode", "tags", "logger_class"}
_WANDB_MODES = ("online", "offline", "disabled")
_ROW_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
DEFAULT_WANDB_LOGGER = "lightning.pytorch.loggers.WandbLogger"


class MatrixError(ValueError):
    """An ablation matrix that cannot be run; the message names the file and the offending key."""


@dataclass(frozen=True)
class WandbSettings:
    """Where the rows log to W&B. ``mode`` offline keeps everything local (``wandb sync`` later)."""

    project: str
    entity: str | None = None
    group: str | None = None
    mode: str | None = None
    tags: tuple[str, ...] = ()
    logger_class: str = DEFAULT_WANDB_LOGGER


@dataclass(frozen=True)
class Scorer:
    """A post-training metric function ``callable(checkpoint, **args) -> dict`` (dotted import path)."""

    callable: str
    args: dict[str, Any] = field(default_factory=dict)

    def resolve(self):
        """Import and return the function."""
        module_name, _, attr = self.callable.rpartition(".")
        module = importlib.import_module(module_name)
        return getattr(module, attr)


@dataclass(frozen=True)
class AblationRow:
    """One run of the matrix: its name (also its output folder), base experiment and dotted CLI overrides."""

    name: str
    base: Path
    axes: dict[str, Any]
    overrides: dict[str, Any]
    extra: bool = False
    description: str = ""


@dataclass
class AblationMatrix:
    """A validated, expanded matrix file."""

    path: Path
    name: str
    base: Path
    output_dir: Path
    axes: dict[str, list[Any]]
    design: str
    rows: list[AblationRow]
    overrides: dict[str, Any] = field(default_factory=dict)
    metrics: list[str] = field(default_factory=list)
    wandb: WandbSettings | None = None
    scorer: Scorer | None = None
    description: str = ""

    def row(self, name: str) -> AblationRow:
        """The row called ``name``; a clear error lists the row names otherwise."""
        for row in self.rows:
            if row.name == name:
                return row
        raise MatrixError(f"{self.path}: no row named {name!r}; rows are {[r.name for r in self.rows]}")


def flatten_overrides(mapping: Mapping[str, Any], where: str, prefix: str = "") -> dict[str, Any]:
    """Flatten ``{trainer: {max_steps: 5}}`` and ``{trainer.max_steps: 5}`` alike into dotted keys."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        if not isinstance(key, str) or not key:
            raise MatrixError(f"{where}: override keys must be non-empty strings, got {key!r}")
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value and "class_path" not in value:
            flat.update(flatten_overrides(value, where, prefix=f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


def find_repo_root(start: Path) -> Path | None:
    """The closest ancestor of ``start`` holding ``pyproject.toml`` or ``.git`` (the dimlab checkout)."""
    for folder in [start, *start.parents]:
        if (folder / "pyproject.toml").is_file() or (folder / ".git").exists():
            return folder
    return None


def resolve_base(value: Any, matrix_path: Path, where: str) -> Path:
    """Find an experiment YAML named in a matrix: absolute, or relative to the matrix file, repo root or cwd."""
    if not isinstance(value, str) or not value:
        raise MatrixError(f"{where}: expected the path of an experiment YAML, got {value!r}")
    path = Path(value).expanduser()
    if path.is_absolute():
        candidates = [path]
    else:
        folders = [matrix_path.parent, find_repo_root(matrix_path.parent), Path.cwd()]
        candidates = [f / path for f in folders if f is not None]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    tried = ", ".join(str(c) for c in dict.fromkeys(candidates))
    raise MatrixError(f"{where}: experiment file {value!r} not found (tried {tried})")


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise MatrixError(f"{where}: expected a mapping, got {type(value).__name__} {value!r}")
    return dict(value)


def _parse_axes(raw: Any, where: str) -> dict[str, list[Any]]:
    axes: dict[str, list[Any]] = {}
    for name, values in _mapping(raw, where).items():
        key = f"{where}.{name}"
        axis = axis_for(name, key)
        if axis is None:
            raise MatrixError(f"{key}: unknown axis {name!r}; expected one of {sorted(AXES)}")
        if not isinstance(values, list) or not values:
            raise MatrixError(f"{key}: expected a non-empty list of values, got {values!r}")
        normalized = [_normalize(axis, v, key) for v in values]
        if len(set(map(repr, normalized))) != len(normalized):
            raise MatrixError(f"{key}: duplicate values in {values!r}")
        axes[name] = normalized
    _check_flags_set_once(list(axes), where)
    # Canonical order (the paper's MS, LSC, PT, LFE) so names and tables do not depend on the YAML order.
    return {name: axes[name] for name in AXIS_ORDER if name in axes}


def _check_flags_set_once(names: list[str], where: str) -> None:
    """MatrixError when two keys set one constructor argument (``long_skip`` beside the old ``long_skips``)."""
    owner: dict[str, str] = {}
    for name in names:
        for flag in known_axis(name).flags:
            if flag in owner:
                raise MatrixError(
                    f"{where}: {owner[flag]!r} and {name!r} both set {flag!r}; keep one of them"
                )
            owner[flag] = name


def _normalize(axis: Axis, value: Any, where: str) -> Any:
    try:
        return normalize_axis_value(axis, value, where)
    except ValueError as err:
        raise MatrixError(str(err)) from None


def _value_label(name: str, value: Any) -> str:
    off = known_axis(name).off
    return f"no_{name}" if value == off and type(value) is type(off) else f"{name}_{value}"


def _leave_one_out(axes: dict[str, list[Any]]) -> list[tuple[str, dict[str, Any]]]:
    full = {axis: values[0] for axis, values in axes.items()}
    rows = [("full", full)]
    for axis, values in axes.items():
        for value in values[1:]:
            rows.append((_value_label(axis, value).lower(), {**full, axis: value}))
    return rows


def _full_factorial(axes: dict[str, list[Any]]) -> list[tuple[str, dict[str, Any]]]:
    rows = []
    for combo in itertools.product(*axes.values()):
        values = dict(zip(axes, combo, strict=True))
        rows.append(("_".join(known_axis(a).tag(v) for a, v in values.items()), values))
    return rows


@dataclass
class _RowSpec:
    name: Any
    axes: dict[str, Any]
    base: Any = None
    overrides: dict[str, Any] = field(default_factory=dict)
    description: str = ""


def _parse_row(raw: Any, where: str) -> _RowSpec:
    entry = _mapping(raw, where)
    if "name" not in entry:
        raise MatrixError(f"{where}: every row needs a `name`")
    values = {}
    for key, value in entry.items():
        if key in _ROW_KEYS:
            continue
        axis = axis_for(key, f"{where}.{key}")
        if axis is None:
            raise MatrixError(
                f"{where}.{key}: unknown axis or row key {key!r}; expected {sorted(_ROW_KEYS)} or an axis "
                f"{sorted(AXES)}"
            )
        values[key] = _normalize(axis, value, f"{where}.{key}")
    _check_flags_set_once(list(values), where)
    return _RowSpec(
        name=entry["name"],
        axes=values,
        base=entry.get("base"),
        overrides=flatten_overrides(
            _mapping(entry.get("overrides"), f"{where}.overrides"), f"{where}.overrides"
        ),
        description=str(entry.get("description") or ""),
    )


def _parse_wandb(raw: Any, default_group: str, where: str) -> WandbSettings | None:
    if raw is None or raw is False:
        return None
    settings = _mapping(raw, where)
    unknown = set(settings) - _WANDB_KEYS
    if unknown:
        raise MatrixError(
            f"{where}.{sorted(unknown)[0]}: unknown key; expected some of {sorted(_WANDB_KEYS)}"
        )
    if settings.get("enabled", True) is False:
        return None
    if not settings.get("project"):
        raise MatrixError(f"{where}.project: required when W&B logging is enabled (or set `enabled: false`)")
    mode = settings.get("mode")
    if mode is not None and mode not in _WANDB_MODES:
        raise MatrixError(f"{where}.mode: expected one of {_WANDB_MODES}, got {mode!r}")
    tags = settings.get("tags") or []
    if not isinstance(tags, list):
        raise MatrixError(f"{where}.tags: expected a list of strings, got {tags!r}")
    return WandbSettings(
        project=str(settings["project"]),
        entity=settings.get("entity"),
        group=settings.get("group") or default_group,
        mode=mode,
        tags=tuple(str(t) for t in tags),
        logger_class=str(settings.get("logger_class") or DEFAULT_WANDB_LOGGER),
    )


def _parse_scorer(raw: Any, where: str) -> Scorer | None:
    if raw is None:
        return None
    settings = _mapping(raw, where)
    unknown = set(settings) - {"callable", "args"}
    if unknown:
        raise MatrixError(f"{where}.{sorted(unknown)[0]}: unknown key; expected callable and args")
    target = settings.get("callable")
    if not isinstance(target, str) or "." not in target:
        raise MatrixError(
            f"{where}.callable: expected a dotted path like pkg.module.function, got {target!r}"
        )
    scorer = Scorer(callable=target, args=_mapping(settings.get("args"), f"{where}.args"))
    try:
        function = scorer.resolve()
    except (ImportError, AttributeError) as err:
        raise MatrixError(f"{where}.callable: cannot import {target!r}: {err}") from None
    if not callable(function):
        raise MatrixError(f"{where}.callable: {target!r} is not callable")
    return scorer


def _design_rows(
    design: Any, raw: dict[str, Any], axes: dict[str, list[Any]], path: Path
) -> tuple[str, list]:
    if isinstance(design, list):
        design, raw_rows = "rows", design
        rows_key = "design"
    else:
        raw_rows, rows_key = raw.get("rows"), "rows"
    if design not in DESIGNS:
        raise MatrixError(
            f"{path}: design: unknown design {design!r}; expected one of {list(DESIGNS)} or a list of rows"
        )
    if design == "rows":
        if not isinstance(raw_rows, list) or not raw_rows:
            raise MatrixError(f"{path}: {rows_key}: design `rows` needs a non-empty list of rows")
        specs = [_parse_row(r, f"{path}: {rows_key}[{i}]") for i, r in enumerate(raw_rows)]
        # Design rows are full-model rows with some axes changed (a row's key replaces every listed axis that
        # sets one of the same constructor arguments).
        full = {axis: values[0] for axis, values in axes.items()}
        for spec in specs:
            changed = {flag for key in spec.axes for flag in known_axis(key).flags}
            kept = {k: v for k, v in full.items() if not changed & set(known_axis(k).flags)}
            spec.axes = {**kept, **spec.axes}
        return design, specs
    if raw.get("rows") is not None:
        raise MatrixError(f"{path}: rows: only used with `design: rows` (design is {design!r})")
    if not axes:
        raise MatrixError(f"{path}: axes: design {design!r} needs at least one axis with values")
    expand = _leave_one_out if design == "leave_one_out" else _full_factorial
    return design, [_RowSpec(name=name, axes=values) for name, values in expand(axes)]


def load_matrix(path: str | Path, output_dir: str | Path | None = None) -> AblationMatrix:
    """Read and validate the matrix file at ``path`` and expand its design into :class:`AblationRow` s.

    Raises :class:`MatrixError` naming the key for unknown axes/values/designs/keys, duplicate row names and
    missing experiment files.
    """
    path = Path(path)
    if not path.is_file():
        raise MatrixError(f"ablation matrix {path} not found")
    try:
        raw = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except (OmegaConfBaseException, ValueError) as err:
        raise MatrixError(f"{path}: cannot read the matrix: {err}") from None
    if not isinstance(raw, dict):
        raise MatrixError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    unknown = sorted(set(raw) - _TOP_KEYS)
    if unknown:
        raise MatrixError(f"{path}: {unknown[0]}: unknown key; expected some of {sorted(_TOP_KEYS)}")
    for required in ("base", "design"):
        if raw.get(required) is None:
            raise MatrixError(f"{path}: {required}: required key is missing")

    name = str(raw.get("name") or path.stem)
    base = resolve_base(raw["base"], path, f"{path}: base")
    out = output_dir if output_dir is not None else raw.get("output_dir") or Path("runs") / "ablations" / name
    overrides = flatten_overrides(_mapping(raw.get("overrides"), f"{path}: overrides"), f"{path}: overrides")
    axes = _parse_axes(raw.get("axes"), f"{path}: axes")
    design, specs = _design_rows(raw["design"], raw, axes, path)

    extra_raw = raw.get("extra_rows") or []
    if not isinstance(extra_raw, list):
        raise MatrixError(f"{path}: extra_rows: expected a list of rows, got {extra_raw!r}")
    extra_specs = [_parse_row(r, f"{path}: extra_rows[{i}]") for i, r in enumerate(extra_raw)]

    metrics = raw.get("metrics") or []
    if not isinstance(metrics, list) or not all(isinstance(m, str) for m in metrics):
        raise MatrixError(f"{path}: metrics: expected a list of metric names, got {metrics!r}")

    rows: list[AblationRow] = []
    seen: dict[str, str] = {}
    for spec, extra in [(s, False) for s in specs] + [(s, True) for s in extra_specs]:
        key = f"{path}: {'extra_rows' if extra else 'design'}"
        if not isinstance(spec.name, str) or not _ROW_NAME.match(spec.name):
            raise MatrixError(
                f"{key}: row name {spec.name!r} must be letters, digits, '_', '-' or '.' (it names a folder)"
            )
        if spec.name in seen:
            raise MatrixError(f"{key}: duplicate row name {spec.name!r} (also in {seen[spec.name]})")
        seen[spec.name] = "extra_rows" if extra else "design"
        row_base = resolve_base(spec.base, path, f"{key} row {spec.name!r} base") if spec.base else base
        rows.append(
            AblationRow(
                name=spec.name,
                base=row_base,
                axes=dict(spec.axes),
                overrides={**overrides, **axis_overrides(spec.axes), **spec.overrides},
                extra=extra,
                description=spec.description,
            )
        )

    return AblationMatrix(
        path=path.resolve(),
        name=name,
        base=base,
        output_dir=Path(out),
        axes=axes,
        design=design,
        rows=rows,
        overrides=overrides,
        metrics=list(metrics),
        wandb=_parse_wandb(raw.get("wandb"), name, f"{path}: wandb"),
        scorer=_parse_scorer(raw.get("scorer"), f"{path}: scorer"),
        description=str(raw.get("description") or ""),
    )
