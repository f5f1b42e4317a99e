"""Parameter count of a row's backbone without training: build it on the meta device from the experiment YAML.

The base YAML is read with omegaconf (``dimlab fit`` uses ``parser_mode: omegaconf``), the row's dotted
``model.backbone.*`` overrides are applied, and jsonargparse instantiates ``model.backbone`` exactly as
``dimlab fit`` would (same ``class_path`` / ``init_args`` resolution and type coercion), only on ``meta``.
Building just the backbone keeps the dry run free of the Trainer, the data and any logger side effects.
"""

from __future__ import annotations

import copy
from argparse import ArgumentError
from pathlib import Path
from typing import Any

import torch
from jsonargparse import ArgumentParser
from omegaconf import OmegaConf
from torch import nn

BACKBONE_KEY = "model.backbone"


def _set_dotted(config: dict[str, Any], dotted: str, value: Any) -> None:
    node = config
    *parents, leaf = dotted.split(".")
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[leaf] = copy.deepcopy(value)


def backbone_config(base: Path, overrides: dict[str, Any]) -> dict[str, Any]:
    """The ``model.backbone`` mapping (``class_path`` + ``init_args``) of ``base`` after ``overrides``."""
    try:
        config = OmegaConf.to_container(OmegaConf.load(base), resolve=True)
    except Exception as err:  # omegaconf raises several unrelated types for bad YAML / interpolation
        raise ValueError(f"{base}: cannot read the experiment config: {err}") from None
    if not isinstance(config, dict):
        raise ValueError(f"{base}: expected a mapping at the top level")
    for key, value in overrides.items():
        if key == BACKBONE_KEY or key.startswith(BACKBONE_KEY + "."):
            _set_dotted(config, key, value)
    backbone = (config.get("model") or {}).get("backbone")
    if not isinstance(backbone, dict) or "class_path" not in backbone:
        raise ValueError(
            f"{base}: model.backbone: expected a mapping with class_path/init_args, got {backbone!r}"
        )
    return backbone


def build_backbone_on_meta(base: Path, overrides: dict[str, Any]) -> nn.Module:
    """Instantiate the row's backbone on the meta device (shapes only, no memory, no weights)."""
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(nn.Module, "backbone", required=True)
    try:
        parsed = parser.parse_object({"backbone": backbone_config(base, overrides)})
        with torch.device("meta"):
            return parser.instantiate_classes(parsed).backbone
    except (TypeError, ValueError, ArgumentError) as err:
        raise ValueError(f"{base}: model.backbone cannot be built with these overrides: {err}") from None


def count_parameters(base: Path, overrides: dict[str, Any]) -> int:
    """Number of parameters of the row's backbone (what ``summary.json`` calls ``num_parameters``)."""
    return sum(p.numel() for p in build_backbone_on_meta(base, overrides).parameters())
