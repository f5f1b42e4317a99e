"""How a backbone describes itself, so checkpoints can rebuild it without the training config."""

from __future__ import annotations

import functools
import importlib
import inspect
from typing import Any

from torch import nn


def backbone_spec(module: nn.Module) -> dict[str, Any]:
    """Return ``{"class_path": ..., "init_args": {...}}`` that rebuilds ``module`` (weights aside).

    Backbones record their constructor arguments in ``init_args`` (see :func:`record_init_args`); this is what
    ``jsonargparse`` / LightningCLI write in YAML too, so the spec can be pasted into a config.
    """
    init_args = getattr(module, "init_args", None)
    if init_args is None:
        raise TypeError(
            f"{type(module).__qualname__} does not record its constructor arguments (no `init_args`); "
            "decorate its __init__ with dimlab.models.spec.record_init_args"
        )
    cls = type(module)
    return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": _plain(dict(init_args))}


def build_from_spec(spec: dict[str, Any]) -> nn.Module:
    """Instantiate a backbone from :func:`backbone_spec` output."""
    try:
        module_name, _, cls_name = spec["class_path"].rpartition(".")
        cls = getattr(importlib.import_module(module_name), cls_name)
    except (KeyError, ImportError, AttributeError) as exc:
        raise ValueError(f"cannot rebuild backbone from spec {spec!r}: {exc}") from exc
    return cls(**spec.get("init_args", {}))


def record_init_args(init):
    """Decorator for a backbone ``__init__`` that stores the bound arguments (defaults applied) in ``init_args``."""
    signature = inspect.signature(init)

    @functools.wraps(init)
    def wrapper(self, *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        init(self, *args, **kwargs)
        self.init_args = {k: v for k, v in bound.arguments.items() if k != "self"}

    return wrapper


def _plain(value):
    """Tuples become lists so the spec survives YAML/JSON round trips unchanged."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
