"""dimlab: a PyTorch Lightning experiment framework for DiM (Diffusion Mamba) and U-ViT.

Importing :mod:`dimlab` never imports ``mamba_ssm``: the CUDA kernels are looked up the first time a Mamba mixer
runs on a GPU. Nor does it import torch until ``dimlab.load_backbone`` is first used, so the ``dimlab`` command
can list its subcommands at once.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "load_backbone"]


def __getattr__(name: str) -> Any:
    # PEP 562: `dimlab.load_backbone` resolves on first use (it needs torch, ~2 s to import).
    if name == "load_backbone":
        return importlib.import_module("dimlab.models.checkpoint").load_backbone
    raise AttributeError(f"module 'dimlab' has no attribute {name!r}")
