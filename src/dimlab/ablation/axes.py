"""The ablation axes: one per DiM switch, named as the ``DiM`` constructor argument it sets.

| axis (matrix key)  | paper component | values                                              | off   |
|--------------------|-----------------|-----------------------------------------------------|-------|
| ``multi_scan``     | MS              | 1..4 scan patterns; true = 4 (released), false = 1  | 1     |
| ``long_skip``      | LSC             | true / false                                        | false |
| ``line_pad``       | PT (row-end pads and pad rows)        | true / false  | false |
| ``cond_separator`` | PT (separators after the cond tokens) | true / false  | false |
| ``local_enhance``  | LFE             | true / false                                        | false |

The paper's PT is ``line_pad`` and ``cond_separator`` together (the official ``use_pad_token``). The matrix keys
of the first release (``long_skips``, ``padding_tokens``, ``local_enhancement``) are still accepted, with a
:class:`DeprecationWarning`, and name rows as they did.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "AXES",
    "AXIS_ORDER",
    "BACKBONE_ARGS",
    "BACKBONE_FLAGS",
    "DEPRECATED_AXES",
    "Axis",
    "axis_for",
    "axis_overrides",
    "known_axis",
    "normalize_axis_value",
]

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
    replaced_by: str = ""  # set on the keys of the first release: what to write instead

    @property
    def flags(self) -> tuple[str, ...]:
        """The constructor arguments this axis sets."""
        return tuple(self.to_kwargs(self.off))


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


def _switch(name: str, paper_name: str, tag: str, flag: str = "", replaced_by: str = "") -> Axis:
    """A true/false axis that sets the constructor argument ``flag`` (default: ``name``); rows are tagged ``tag`` /
    ``no<tag>``. ``replaced_by`` marks a key of the first release."""
    flag = flag or name
    return Axis(
        name=name,
        paper_name=paper_name,
        off=False,
        normalize=_as_bool,
        to_kwargs=lambda v: {flag: v},
        tag=lambda v: tag if v else f"no{tag}",
        expected="true or false",
        replaced_by=replaced_by,
    )


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
        _switch("long_skip", "LSC", "lsc"),
        _switch("line_pad", "PT", "lpad"),
        _switch("cond_separator", "PT", "sep"),
        _switch("local_enhance", "LFE", "lfe"),
    )
}

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


#: The matrix keys of the first release, in their order (MS, LSC, PT, LFE).
DEPRECATED_AXES: dict[str, Axis] = {
    axis.name: axis
    for axis in (
        _switch("long_skips", "LSC", "lsc", flag="long_skip", replaced_by="long_skip"),
        Axis(
            name="padding_tokens",
            paper_name="PT",
            off=False,
            normalize=_padding,
            to_kwargs=_padding_kwargs,
            tag=_padding_tag,
            expected="true, false, 'line_pad_only' or 'cond_separator_only'",
            replaced_by="line_pad and cond_separator",
        ),
        _switch("local_enhancement", "LFE", "lfe", flag="local_enhance", replaced_by="local_enhance"),
    )
}

#: Canonical order of every accepted key (the paper's MS, LSC, PT, LFE), so names and tables do not depend on the
#: order of the YAML.
AXIS_ORDER: tuple[str, ...] = (
    "multi_scan",
    "long_skip",
    "long_skips",
    "line_pad",
    "cond_separator",
    "padding_tokens",
    "local_enhance",
    "local_enhancement",
)

#: Every DiM constructor flag an axis can set, in a stable order (used for sweeps and tables).
BACKBONE_FLAGS: tuple[str, ...] = tuple(AXES)


def known_axis(key: str) -> Axis:
    """The axis of an already validated matrix key (current or first-release spelling)."""
    return AXES.get(key) or DEPRECATED_AXES[key]


def axis_for(key: str, where: str) -> Axis | None:
    """The axis a matrix key names (None when it is no axis); a key of the first release warns once per use."""
    if key in AXES:
        return AXES[key]
    axis = DEPRECATED_AXES.get(key)
    if axis is not None:
        warnings.warn(
            f"{where}: the ablation axis {key!r} is now {axis.replaced_by!r} (the DiM constructor argument"
            f"{'s' if ' and ' in axis.replaced_by else ''}); {key!r} still works for one release",
            DeprecationWarning,
            stacklevel=3,
        )
    return axis


def normalize_axis_value(axis: Axis, value: Any, where: str) -> Any:
    """Check ``value`` for ``axis`` and return its canonical form (``multi_scan: true`` becomes 4).

    ``where`` names the matrix key being read, so the error says which entry is wrong.
    """
    try:
        return axis.normalize(value)
    except (ValueError, TypeError):
        raise ValueError(
            f"{where}: invalid value {value!r} for axis {axis.name!r}; expected {axis.expected}"
        ) from None


def axis_overrides(values: dict[str, Any]) -> dict[str, Any]:
    """Dotted ``model.backbone.init_args.*`` overrides for a row's (normalized) axis values."""
    overrides: dict[str, Any] = {}
    for key, value in values.items():
        for flag, flag_value in known_axis(key).to_kwargs(value).items():
            overrides[f"{BACKBONE_ARGS}.{flag}"] = flag_value
    return overrides
