"""dimlab: a PyTorch Lightning experiment framework for DiM (Diffusion Mamba) and U-ViT.

Importing :mod:`dimlab` is cheap and never imports ``mamba_ssm``: the CUDA kernels are looked up lazily, the
first time a Mamba mixer runs on a GPU.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "load_backbone"]


def load_backbone(path, map_location="cpu", ema: bool = True, **overrides):
    """Return the ready backbone ``nn.Module`` stored in a dimlab checkpoint (training or converted official).

    ``ema`` picks the EMA weights of a training checkpoint; ``overrides`` change constructor arguments (for example
    ``input_size=64`` to run a 256 model at 512, resizing its position table). See
    :func:`dimlab.models.convert.load_backbone`.
    """
    from dimlab.models.convert import load_backbone as _load

    return _load(path, map_location=map_location, ema=ema, **overrides)
