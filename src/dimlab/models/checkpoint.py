"""The backbone checkpoint format and loading backbones from files.

Backbone file (written by ``dimlab convert-official``, read by :func:`load_backbone`)::

    {"dimlab_backbone": {"class_path": "dimlab.models.dim.DiM", "init_args": {...}},
     "backbone": <state dict>,
     "source": "<where the weights came from>",
     "dimlab_diffusion": {...}}   # optional: how to sample it (dimlab.sampling.spec.DiffusionSpec)

Lightning training checkpoints of dimlab's DiffusionModule carry the same ``dimlab_backbone`` entry, the raw
weights under ``state_dict`` with the key prefix ``backbone.``, and the EMA weights (unprefixed) under
``ema_backbone``; :func:`load_backbone` reads both. Files are read by
:func:`dimlab.models.torch_files.read_checkpoint`: tensors and plain data only unless ``trusted=True``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dimlab.errors import CheckpointFileError
from dimlab.models.layers import resize_pos_embed
from dimlab.models.presets import DIM_CLASS_PATH
from dimlab.models.spec import build_from_spec
from dimlab.models.torch_files import read_checkpoint

__all__ = [
    "LoadReport",
    "backbone_checkpoint",
    "backbone_from_checkpoint",
    "instantiate_backbone",
    "load_backbone",
    "load_weights_adapting",
    "read_backbone_file",
    "read_checkpoint",
]


def backbone_checkpoint(
    init_args: Mapping[str, Any],
    state_dict: Mapping[str, torch.Tensor],
    source: str,
    class_path: str = DIM_CLASS_PATH,
) -> dict[str, Any]:
    """The dimlab backbone file content (see the module docstring)."""
    return {
        "dimlab_backbone": {"class_path": class_path, "init_args": dict(init_args)},
        "backbone": dict(state_dict),
        "source": source,
    }


def backbone_from_checkpoint(
    ckpt: Any, ema: bool = True, where: str | Path = "the checkpoint"
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(``dimlab_backbone`` spec, backbone state dict) of a loaded backbone file or Lightning training checkpoint.

    Weights: ``backbone`` (backbone files); else ``ema_backbone`` when ``ema`` and present; else the
    ``backbone.``-prefixed entries of ``state_dict``. ``where`` names the file in errors.
    """
    if not isinstance(ckpt, Mapping) or "dimlab_backbone" not in ckpt:
        raise CheckpointFileError(
            f"{where} is not a dimlab backbone or training checkpoint (no 'dimlab_backbone' entry); "
            "convert official DiM files with `dimlab convert-official SRC.pth DST`"
        )
    spec = dict(ckpt["dimlab_backbone"])
    if "class_path" not in spec or "init_args" not in spec:
        raise CheckpointFileError(
            f"{where}: 'dimlab_backbone' must hold 'class_path' and 'init_args', got {sorted(spec)}"
        )
    if "backbone" in ckpt:
        weights = dict(ckpt["backbone"])
    elif ema and ckpt.get("ema_backbone") is not None:
        weights = dict(ckpt["ema_backbone"])
    elif "state_dict" in ckpt:
        prefix = "backbone."
        weights = {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
        if not weights:
            raise CheckpointFileError(f"{where}: 'state_dict' has no keys starting with {prefix!r}")
    else:
        raise CheckpointFileError(
            f"{where}: no weights found (expected 'backbone', 'ema_backbone' or 'state_dict')"
        )
    return spec, weights


def read_backbone_file(
    path: str | Path, map_location: Any = "cpu", ema: bool = True, trusted: bool = False
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(``dimlab_backbone`` spec, backbone state dict) of the backbone file or training checkpoint at ``path``.

    ``trusted=True`` also unpickles Python objects other than tensors and plain data (see :func:`read_checkpoint`).
    """
    ckpt = read_checkpoint(path, map_location, trusted=trusted)
    return backbone_from_checkpoint(ckpt, ema=ema, where=path)


def instantiate_backbone(
    spec: Mapping[str, Any], weights: Mapping[str, torch.Tensor], **overrides: Any
) -> nn.Module:
    """The backbone described by ``spec`` with ``weights`` loaded.

    Without ``overrides`` the weights load strictly, into a model built on the meta device (no wasted random
    init). With ``overrides`` (e.g. ``input_size=64`` to run a 256 model at 512) the model is built with the
    changed kwargs and loaded through :func:`load_weights_adapting` (position table resized bilinearly).
    """
    spec = {"class_path": spec["class_path"], "init_args": {**spec["init_args"], **overrides}}
    if overrides:
        model = build_from_spec(spec)
        load_weights_adapting(model, weights)
        return model
    with torch.device("meta"):
        model = build_from_spec(spec)
    model.load_state_dict(weights, strict=True, assign=True)
    if _has_meta_tensors(model):  # a buffer that the state dict does not hold: build for real instead
        model = build_from_spec(spec)
        model.load_state_dict(weights, strict=True)
    return model


def load_backbone(
    path: str | Path, map_location: Any = "cpu", ema: bool = True, trusted: bool = False, **overrides: Any
) -> nn.Module:
    """Build the backbone stored in ``path`` (backbone file or training checkpoint) and load its weights.

    ``ema`` picks the EMA weights of a training checkpoint; ``trusted=True`` lets the file hold arbitrary
    pickled objects (only for files you trust, see :func:`read_checkpoint`); ``overrides`` change constructor
    arguments (see :func:`instantiate_backbone`).
    """
    spec, weights = read_backbone_file(path, map_location=map_location, ema=ema, trusted=trusted)
    return instantiate_backbone(spec, weights, **overrides)


def _has_meta_tensors(model: nn.Module) -> bool:
    return any(t.is_meta for t in [*model.parameters(), *model.buffers()])


@dataclass
class LoadReport:
    """What :func:`load_weights_adapting` did with each tensor name."""

    copied: list[str] = field(default_factory=list)
    resized: list[str] = field(default_factory=list)
    newly_initialised: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)


def load_weights_adapting(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], source_grid: tuple[int, int] | None = None
) -> LoadReport:
    """Load ``state_dict`` into ``model``, resizing a position table whose grid differs (weak-to-strong fine-tune).

    The position table (``pos_embed``) is resized bilinearly from ``source_grid`` (default: the square grid its
    row count implies); every other tensor must match in shape, else ValueError listing (name, expected, got)
    for each mismatch. Model tensors absent from ``state_dict`` keep their initialisation
    (``newly_initialised``); extra entries are ignored (``unexpected``).
    """
    target = model.state_dict()
    report = LoadReport()
    to_load: dict[str, torch.Tensor] = {}
    mismatched = []
    for name, expected in target.items():
        if name not in state_dict:
            report.newly_initialised.append(name)
            continue
        value = state_dict[name]
        if tuple(value.shape) == tuple(expected.shape):
            to_load[name] = value
            report.copied.append(name)
        elif name == "pos_embed" and hasattr(model, "grid_size") and value.ndim == 3:
            to_load[name] = _resize_table(value, expected, tuple(model.grid_size), source_grid)
            report.resized.append(name)
        else:
            mismatched.append(f"{name}: expected {tuple(expected.shape)}, got {tuple(value.shape)}")
    report.unexpected = sorted(set(state_dict) - set(target))
    if mismatched:
        raise ValueError(f"{len(mismatched)} tensor(s) do not match the model: {mismatched}")
    model.load_state_dict(to_load, strict=False)
    return report


def _resize_table(
    value: torch.Tensor,
    expected: torch.Tensor,
    dst_grid: tuple[int, int],
    source_grid: tuple[int, int] | None,
) -> torch.Tensor:
    num_extra = expected.shape[1] - dst_grid[0] * dst_grid[1]
    if source_grid is None:
        side = math.isqrt(value.shape[1] - num_extra)
        if side * side != value.shape[1] - num_extra:
            raise ValueError(
                f"pos_embed: cannot tell the source grid of {value.shape[1] - num_extra} image rows; "
                "pass source_grid=(rows, cols)"
            )
        source_grid = (side, side)
    return resize_pos_embed(value, source_grid, dst_grid, num_extra=num_extra)
