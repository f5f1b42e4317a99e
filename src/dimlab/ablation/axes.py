"""The paper's four DiM ablation axes and how each axis value maps to ``DiM`` constructor arguments.

| axis (matrix key)   | paper | value -> ``model.backbone.init_args``                                          | off value |
|---------------------|-------|--------------------------------------------------------------------------------|-----------|
| ``multi_scan``        | MS    | 1..4 -> ``multi_scan`` (1 = row-forward only; 4 = released); true = 4, false = 1 | 1         |
| ``long_skips``        | LSC   | bool -> ``long_skip``                                                          | false     |
| ``padding_tokens``    | PT    | bool -> ``line_pad`` AND ``cond_separator``; ``line_pad_only`` / ``cond_separator_only`` turn on one half | false |
| ``local_enhancement`` | LFE   | bool -> ``local_enhance``                                                      | false     |
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: Dotted CLI prefix of the backbone's constructor arguments in a ``dimlab fit`` config.
BACKBONE_ARGS = "model.backbone.init_args"


@dataclass(frozen=True)
class Axis:
    """One ablation axis: how to validate a value, turn it into backbone kwargs, and name it in a row name."""

    name: str
    paper_name: str
    off: Any
    normalize: Callable[[Any], Any]
    to_kwargs: Callable[[Any], dict[str, Any]]
    tag: Callable[[Any], str]
    expected: str


def _as_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise ValueError


def _multi_scan(value: Any) -> int:
    if isinstance(value, bool):
        return 4 if value else 1
    if isinstance(value, int) and 1 <= value <= 4:
        return value
    raise ValueError


_PADDING_MODES = {
    True: (True, True),
    False: (False, False),
    "line_pad_only": (True, False),
    "cond_separator_only": (False, True),
}


def _padding(value: Any) -> bool | str:
    if isinstance(value, bool) or value in ("line_pad_only", "cond_separator_only"):
        return value
    raise ValueError


def _padding_kwargs(value: bool | str) -> dict[str, Any]:
    line_pad, cond_separator = _PADDING_MODES[value]
    return {"line_pad": line_pad, "cond_separator": cond_separator}


def _padding_tag(value: bool | str) -> str:
    return {True: "pt", False: "nopt", "line_pad_only": "ptline", "cond_separator_only": "ptsep"}[value]


AXES: dict[str, Axis] = {
    axis.name: axis
    for axis in (
        Axis(
            name="multi_scan",
            paper_name="MS",
            off=1,
            normalize=_multi_scan,
            to_kwargs=lambda v: {"multi_scan": v},
            tag=lambda v: f"ms{v}",
            expected="an int 1..4 (number of scan patterns) or true (= 4) / false (= 1)",
        ),
        Axis(
            name="long_skips",
            paper_name="LSC",
            off=False,
            normalize=_as_bool,
            to_kwargs=lambda v: {"long_skip": v},
            tag=lambda v: "lsc" if v else "nolsc",
            expected="true or false",
        ),
        Axis(
            name="padding_tokens",
            paper_name="PT",
            off=False,
            normalize=_padding,
            to_kwargs=_padding_kwargs,
            tag=_padding_tag,
            expected="true, false, 'line_pad_only' or 'cond_separator_only'",
        ),
        Axis(
            name="local_enhancement",
            paper_name="LFE",
            off=False,
            normalize=_as_bool,
            to_kwargs=lambda v: {"local_enhance": v},
            tag=lambda v: "lfe" if v else "nolfe",
            expected="true or false",
        ),
    )
}

#: Every DiM constructor flag an axis can set, in a stable order (used for sweeps and tables).
BACKBONE_FLAGS: tuple[str, ...] = ("multi_scan", "long_skip", "line_pad", "cond_separator", "local_enhance")


def normalize_axis_value(axis: str, value: Any, where: str) -> Any:
    """Check ``value`` for ``axis`` and return its canonical form (``multi_scan: true`` becomes 4).

    ``where`` names the matrix key being read, so the error says which entry is wrong.
    """
    if axis not in AXES:
        raise ValueError(f"{where}: unknown axis {axis!r}; expected one of {sorted(AXES)}")
    try:
        return AXES[axis].normalize(value)
    except (ValueError, TypeError):
        raise ValueError(
            f"{where}: invalid value {value!r} for axis {axis!r}; expected {AXES[axis].expected}"
        ) from None


def axis_overrides(values: dict[str, Any]) -> dict[str, Any]:
    """Dotted ``model.backbone.init_args.*`` overrides for a row's (normalized) axis values."""
    overrides: dict[str, Any] = {}
    for axis, value in values.items():
        for flag, flag_value in AXES[axis].to_kwargs(value).items():
            overrides[f"{BACKBONE_ARGS}.{flag}"] = flag_value
    return overrides
