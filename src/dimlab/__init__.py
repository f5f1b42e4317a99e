"""dimlab: a PyTorch Lightning experiment framework for DiM (Diffusion Mamba) and U-ViT.

Importing :mod:`dimlab` never imports ``mamba_ssm``: the CUDA kernels are looked up the first time a Mamba mixer
runs on a GPU.
"""

from __future__ import annotations

from dimlab.models.checkpoint import load_backbone

__version__ = "0.1.0"

__all__ = ["__version__", "load_backbone"]
