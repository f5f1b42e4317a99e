"""Skip-tune: time-dependent scaling of the long-skip tensors that DiM's decoder blocks receive.

The released DiM 1024/1536 configs set ``is_skip_tune=True, skip_tune_param=(0.82, 1.0)``. The intent
(docs/diffusion.md, "Skip-tune") is to multiply the skip arriving at the ``k``-th receiving block by a factor that ramps
linearly from ``rho_bottom`` at the first receiving block to ``rho_top_eff`` at the last, with
``rho_top_eff = rho_bottom + (rho_top - rho_bottom) t`` (``= 1 + (rho_top - 1) t`` at the default
``rho_bottom = 1``): strongest damping at high noise, none at ``t = 0``.

The released code computes ``t`` as ``ones_like(t) / 1000 = 0.001`` (quirk Q13 of docs/backbone.md), so the factors span only
``1.0 .. 0.99982`` and skip-tune is effectively a no-op there. This function implements the intended ramp with the
real continuous time; passing ``t_cont = 0.001`` everywhere reproduces the released behaviour.
"""

from __future__ import annotations

import torch

__all__ = ["skip_tune_scales"]


def skip_tune_scales(
    t_cont: torch.Tensor, num_receivers: int, rho_top: float = 0.82, rho_bottom: float = 1.0
) -> torch.Tensor:
    """Per-sample skip factors, shape ``(B, num_receivers)``, receivers ordered first (bottom) to last (top).

    ``t_cont`` is the continuous time in ``[0, 1]`` (``t_net / 1000`` for the discrete schedule), shape ``(B,)``
    or scalar. Receiver ``k`` gets ``rho_bottom + k / (num_receivers - 1) * (rho_top_eff - rho_bottom)``; a single
    receiver gets ``rho_bottom`` (the released formula would divide by zero there).
    """
    if num_receivers < 1:
        raise ValueError(f"skip_tune_scales: num_receivers must be >= 1, got {num_receivers}")
    t = torch.as_tensor(t_cont).reshape(-1)
    dtype = t.dtype if t.dtype.is_floating_point else torch.float32
    t = t.to(dtype)
    rho_top_eff = rho_bottom + (rho_top - rho_bottom) * t
    if num_receivers == 1:
        return torch.full((t.shape[0], 1), float(rho_bottom), dtype=dtype, device=t.device)
    ramp = torch.arange(num_receivers, dtype=dtype, device=t.device) / (num_receivers - 1)
    return rho_bottom + ramp[None, :] * (rho_top_eff[:, None] - rho_bottom)
