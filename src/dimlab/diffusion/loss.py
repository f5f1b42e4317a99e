"""The training objective: epsilon-prediction MSE, per sample (``LSimple`` of the official trainers)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from dimlab.diffusion import rng
from dimlab.diffusion.broadcast import per_sample
from dimlab.diffusion.schedules import NoiseSchedule

__all__ = ["EpsModelFn", "epsilon_loss", "noise_sample"]

EpsModelFn = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]
"""``model_fn(x_t, t_net, y) -> eps_hat``: the backbone called with the network time and the labels."""


def noise_sample(
    schedule: NoiseSchedule, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor
) -> torch.Tensor:
    """``x_t = alpha_t x0 + sigma_t noise``, computed in float32 and returned in ``x0``'s dtype."""
    alpha, sigma = schedule.alpha_sigma(t.to(torch.float32))
    x_t = per_sample(alpha, x0) * x0.float() + per_sample(sigma, x0) * noise.float()
    return x_t.to(x0.dtype)


def epsilon_loss(
    model_fn: EpsModelFn,
    schedule: NoiseSchedule,
    x0: torch.Tensor,
    y: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    bf16_timesteps: bool = False,
) -> torch.Tensor:
    """Per-sample mean over ``C, H, W`` of ``(eps - model_fn(x_t, t_net, y))^2``; shape ``(B,)``, float32.

    Time is drawn by ``schedule.sample_training_time`` and noise is standard normal in ``x0``'s dtype, both from
    ``generator`` when given. The backbone receives ``schedule.network_time(t)`` (discrete: ``n``; VP:
    ``t * 999``). ``bf16_timesteps=True`` reproduces the official ImageNet trainer, which casts ``n`` to the bf16
    latent dtype before the network sees it (only 506 distinct values for ``n = 1..1000``; docs/diffusion.md,
    "Loss") while the noise level still uses the exact ``n``. It is off by default: we fix the mismatch.
    The caller takes the batch mean (or any weighting).
    """
    if x0.dim() < 2:
        raise ValueError(f"epsilon_loss: x0 must be batched (B, ...), got shape {tuple(x0.shape)}")
    t = schedule.sample_training_time(x0.shape[0], x0.device, generator=generator)
    noise = rng.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
    x_t = noise_sample(schedule, x0, t, noise)
    t_net = schedule.network_time(t)
    if bf16_timesteps:
        t_net = t_net.to(torch.bfloat16).to(torch.float32)
    eps_hat = model_fn(x_t, t_net, y)
    if eps_hat.shape != x0.shape:
        raise ValueError(
            f"epsilon_loss: model_fn returned shape {tuple(eps_hat.shape)}, expected {tuple(x0.shape)}"
        )
    return (eps_hat.float() - noise.float()).pow(2).flatten(1).mean(dim=1)
