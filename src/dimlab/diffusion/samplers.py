"""Reverse-process samplers behind one entry point, :func:`sample`.

``model_fn(x, t_net) -> eps`` is the (already CFG-wrapped) noise predictor; ``t_net`` is
``schedule.network_time(t)``. Samplers:

* ``"dpm++"``: DPM-Solver++ (data prediction), the official ImageNet evaluator: 50 steps, order 3 ``'fast'``,
  ``time_uniform``, ``t_end = 1/1000``, NFE = 50.
* ``"dpm"``: plain DPM-Solver (noise prediction); used by the official upsampling test and CIFAR monitoring.
* ``"ddpm"``: ancestral sampling with the DDPM posterior over ``steps`` evenly strided steps.
* ``"euler_maruyama"``: the reverse VP SDE (U-ViT ``sde.py``, the official CIFAR FID sampler): grid
  ``[0] + linspace(t_end=1e-3, T, steps)``, noise on every step but the last.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from rich.progress import track

from dimlab.diffusion import rng
from dimlab.diffusion.broadcast import per_sample
from dimlab.diffusion.dpm_solver import SKIP_TYPES, DPMSolver
from dimlab.diffusion.schedules import DiscreteSDSchedule, NoiseSchedule

__all__ = [
    "SAMPLERS",
    "check_sampler_settings",
    "ddpm_sample",
    "ddpm_times",
    "euler_maruyama_sample",
    "sample",
]

SAMPLERS: tuple[str, ...] = ("dpm++", "dpm", "ddpm", "euler_maruyama")

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def check_sampler_settings(
    sampler: str, steps: int, order: int = 3, method: str = "fast", skip_type: str = "time_uniform"
) -> None:
    """ValueError, saying what would work, when :func:`sample` cannot run ``sampler`` with these settings.

    Callers check before any model is loaded (``dimlab sample`` names the argument); :func:`sample` checks again.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; expected one of {SAMPLERS}")
    if steps < 1:
        raise ValueError(f"sample: steps must be >= 1, got {steps}")
    if sampler in ("dpm++", "dpm"):
        if order not in (1, 2, 3):
            raise ValueError(f"sample: DPM-Solver order must be 1, 2 or 3, got {order}")
        if skip_type not in SKIP_TYPES:
            raise ValueError(f"sample: unknown skip_type {skip_type!r}; expected one of {SKIP_TYPES}")
        if steps < order:
            raise ValueError(
                f"{sampler} (DPM-Solver, order {order}) needs at least {order} steps, got {steps}"
            )
        if method not in ("fast", "singlestep"):
            raise ValueError(f"unknown DPM-Solver method {method!r}; expected 'fast' or 'singlestep'")


def _maybe_track(items: list, progress: bool, description: str) -> Iterable:
    if not progress:
        return items

    return track(items, description=description)


def ddpm_times(
    schedule: NoiseSchedule, steps: int, device: torch.device | str, dtype: torch.dtype
) -> torch.Tensor:
    """Decreasing times ``t_steps > ... > t_1 > t_0 = 0`` for ancestral sampling.

    Discrete schedule: ``t_i = floor(i N / steps) / N`` (evenly strided integer steps, e.g. ``1000, 980, ..., 20``
    for 50 steps and every step for 1000), then the clean ``t = 0``. Continuous schedule: ``t_i = i T / steps``.
    """
    if steps < 1:
        raise ValueError(f"ddpm: steps must be >= 1, got {steps}")
    i = torch.arange(steps, -1, -1, device=device, dtype=torch.float64)
    if isinstance(schedule, DiscreteSDSchedule):
        if steps > schedule.num_steps:
            raise ValueError(f"ddpm: steps={steps} exceeds the {schedule.num_steps} discrete steps")
        grid = torch.floor(i * schedule.num_steps / steps) / schedule.num_steps
    else:
        grid = i * schedule.T / steps
    return grid.to(dtype)


@torch.no_grad()
def ddpm_sample(
    model_fn: ModelFn,
    schedule: NoiseSchedule,
    noise: torch.Tensor,
    steps: int,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Ancestral sampling: ``x_s ~ q(x_s | x_t, x0_hat)`` with ``x0_hat = (x_t - sigma_t eps) / alpha_t``.

    For a jump from ``t`` to ``s < t``, ``beta = 1 - abar_t / abar_s``; the posterior mean is
    ``sqrt(abar_s) beta / (1 - abar_t) x0_hat + sqrt(1 - beta) (1 - abar_s) / (1 - abar_t) x_t`` and the variance
    ``beta (1 - abar_s) / (1 - abar_t)`` (zero on the final jump to ``t = 0``, which returns ``x0_hat``).
    """
    x = noise
    grid = ddpm_times(schedule, steps, x.device, x.dtype)
    pairs = [(grid[k], grid[k + 1], k == steps - 1) for k in range(steps)]
    for t, s, last in _maybe_track(pairs, progress, "DDPM"):
        vt, vs = t.reshape(1), s.reshape(1)
        abar_t, abar_s = schedule.alpha_bar(vt), schedule.alpha_bar(vs)
        eps = model_fn(x, schedule.network_time(vt).expand(x.shape[0])).to(x.dtype)
        x0_hat = (x - per_sample(torch.sqrt(1.0 - abar_t), x) * eps) / per_sample(torch.sqrt(abar_t), x)
        beta = 1.0 - abar_t / abar_s
        mean = (
            per_sample(torch.sqrt(abar_s) * beta / (1.0 - abar_t), x) * x0_hat
            + per_sample(torch.sqrt(1.0 - beta) * (1.0 - abar_s) / (1.0 - abar_t), x) * x
        )
        if not last:
            var = beta * (1.0 - abar_s) / (1.0 - abar_t)
            z = rng.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator)
            x = mean + per_sample(torch.sqrt(var), x) * z
        else:
            x = mean
    return x


@torch.no_grad()
def euler_maruyama_sample(
    model_fn: ModelFn,
    schedule: NoiseSchedule,
    noise: torch.Tensor,
    steps: int,
    t_end: float = 1e-3,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Euler-Maruyama on the reverse SDE ``dx = [-beta/2 x - beta score] dt + sqrt(beta) dW`` (backwards in t).

    ``score = -eps / sigma_t``. Each step from ``t`` down to ``s`` evaluates drift and diffusion at ``t``;
    the last step (to ``s = 0``) adds no noise. Grid: ``[0] + linspace(t_end, T, steps)``.
    """
    if steps < 1:
        raise ValueError(f"euler_maruyama: steps must be >= 1, got {steps}")
    if not 0.0 < t_end < schedule.T:
        raise ValueError(f"euler_maruyama: need 0 < t_end < T={schedule.T}, got {t_end}")
    x = noise
    grid = torch.cat(
        [
            torch.zeros(1, device=x.device, dtype=x.dtype),
            torch.linspace(t_end, schedule.T, steps, device=x.device, dtype=x.dtype),
        ]
    )
    pairs = [(grid[k], grid[k - 1], k == 1) for k in range(steps, 0, -1)]
    for t, s, last in _maybe_track(pairs, progress, "Euler-Maruyama"):
        vt = t.reshape(1)
        beta = per_sample(schedule.beta(vt), x)
        eps = model_fn(x, schedule.network_time(vt).expand(x.shape[0])).to(x.dtype)
        score = -eps / per_sample(schedule.marginal_std(vt), x)
        drift = -0.5 * beta * x - beta * score
        dt = s - t
        mean = x + drift * dt
        if not last:
            z = rng.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator)
            x = mean + torch.sqrt(beta * (-dt)) * z
        else:
            x = mean
    return x


@torch.no_grad()
def sample(
    model_fn: ModelFn,
    schedule: NoiseSchedule,
    noise: torch.Tensor,
    *,
    sampler: str = "dpm++",
    steps: int = 50,
    order: int = 3,
    method: str = "fast",
    skip_type: str = "time_uniform",
    t_end: float | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Run ``sampler`` from ``noise`` (``x`` at ``t = T``) and return the final sample.

    ``order``, ``method`` and ``skip_type`` apply to ``"dpm++"``/``"dpm"``; ``generator`` to the stochastic
    samplers. ``t_end`` defaults to ``schedule.eps`` for the DPM-Solvers and ``1e-3`` for Euler-Maruyama; DDPM
    always ends at ``t = 0`` and rejects ``t_end``. The DPM-Solvers return ``x`` at ``t_end`` (no final
    denoising), as the official evaluators do. Arithmetic runs in ``noise.dtype``.
    """
    check_sampler_settings(sampler, steps, order, method, skip_type)
    if sampler in ("dpm++", "dpm"):
        solver = DPMSolver(model_fn, schedule, predict_x0=(sampler == "dpm++"))
        return solver.sample(
            noise,
            steps=steps,
            order=order,
            method=method,
            skip_type=skip_type,
            t_end=t_end,
            progress=progress,
        )
    if sampler == "ddpm":
        if t_end is not None:
            raise ValueError("sample: the ddpm sampler always ends at t = 0; do not pass t_end")
        return ddpm_sample(model_fn, schedule, noise, steps, generator=generator, progress=progress)
    return euler_maruyama_sample(
        model_fn,
        schedule,
        noise,
        steps,
        t_end=1e-3 if t_end is None else t_end,
        generator=generator,
        progress=progress,
    )
