"""Classifier-free guidance in U-ViT's convention: ``eps = eps_c + s (eps_c - eps_u)``, i.e. weight ``w = 1 + s``.

The official evaluators use ``s = 0.4`` (256 px, "w = 1.4"), ``s = 0.7`` (512 px, the paper's "cfg = 1.7") and
``s = 3.0`` for the upsampling tests. In the ``w`` convention of DiT/diffusers (``eps_u + w (eps_c - eps_u)``)
the same guidance is ``w = 1 + s``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["cfg_model_fn", "cfg_scale_to_weight", "cfg_weight_to_scale"]


def cfg_scale_to_weight(cfg_scale: float) -> float:
    """U-ViT scale ``s`` to the DiT/diffusers guidance weight ``w = 1 + s``."""
    return 1.0 + cfg_scale


def cfg_weight_to_scale(weight: float) -> float:
    """DiT/diffusers guidance weight ``w`` to U-ViT scale ``s = w - 1``."""
    return weight - 1.0


def cfg_model_fn(
    model: Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor],
    y: torch.Tensor | None,
    null_class: int,
    cfg_scale: float,
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Wrap ``model(x, t_net, y) -> eps`` into the sampler interface ``fn(x, t_net) -> guided eps``.

    The conditional and unconditional passes run as ONE forward over the batch ``[x; x]`` with labels
    ``[y; null_class]`` (half the kernel launches of two calls; same numbers up to batch-size effects of the
    backbone). ``cfg_scale == 0`` makes a single conditional forward. ``y`` may be ``None`` only then (an
    unconditional model). A scalar ``t_net`` is broadcast to the batch.
    """
    if cfg_scale < 0:
        raise ValueError(
            f"cfg_model_fn: cfg_scale must be >= 0 (U-ViT convention, w = 1 + s), got {cfg_scale}"
        )
    if cfg_scale != 0 and y is None:
        raise ValueError("cfg_model_fn: guidance (cfg_scale != 0) needs class labels y, got None")

    def guided(x: torch.Tensor, t_net: torch.Tensor) -> torch.Tensor:
        t_net = torch.as_tensor(t_net, device=x.device)
        if t_net.dim() == 0:
            t_net = t_net.expand(x.shape[0])
        if y is not None and y.shape[0] != x.shape[0]:
            raise ValueError(f"cfg_model_fn: {y.shape[0]} labels for a batch of {x.shape[0]}")
        if cfg_scale == 0:
            return model(x, t_net, y)
        null = torch.full_like(y, null_class)
        out = model(torch.cat([x, x]), torch.cat([t_net, t_net]), torch.cat([y, null]))
        eps_cond, eps_uncond = out.chunk(2)
        return eps_cond + cfg_scale * (eps_cond - eps_uncond)

    return guided
