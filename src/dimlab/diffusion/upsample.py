"""Training-free upsample guidance (Hwang et al., arXiv 2404.01709) as DiM's 1024/1536 evaluator uses it.

A model trained at resolution ``r`` samples at ``m r``. At every call with high-resolution ``x`` at time ``t``:

* ``eps = model_fn(x, t_net)`` (the caller's model_fn is already CFG-wrapped);
* ``w_t = theta * 1[t >= (1 - eta) T]`` (guidance only on the noisiest ``eta`` fraction of the trajectory);
* when active: ``D`` = ``m x m`` average pooling, ``U`` = nearest upsampling by ``m``; ``alpha_bar_t`` is read from
  the discrete table at index ``floor(t * N)``; ``P = alpha_bar_t + (1 - alpha_bar_t) / m^2``;
  ``x_low = D(x) / sqrt(P)`` is a valid low-resolution noisy sample whose SNR is ``m^2 SNR(t)``; ``tau`` is the
  discrete step whose SNR is closest to ``m^2 SNR(t)``, clamped to ``tau <= t``;
  ``eps_low = model_fn(x_low, tau_net)``; and ``eps_hat = eps + w_t U(eps_low / m - D(eps))``, i.e. the ``m x m``
  block means of the high-resolution noise prediction are replaced by the low-resolution model's estimate.

``tau`` bookkeeping (docs/diffusion.md, "Upsample guidance"). The released code searches a preset SNR table built at the
normalised times ``(999 - j) / 1000`` (read through a float32 ``floor``, which is off by one step for 5 entries) but
returns ``tau = 1 - j / 999``, so the network sees ``tau * 1000 = n * 1000 / 999`` for step ``n``, and it reads
``alpha_bar`` at ``floor(t * 1000)`` in float32. ``tau_bookkeeping="clean"`` (our default) searches steps
``n = 1..N`` of the same table that gives ``alpha_bar``, returns ``tau = n / N`` (so the network sees exactly ``n``),
and computes ``floor`` in float64 with a 1e-3-step tolerance for float32 network times. ``"official"`` reproduces
the released arithmetic. Both differ by about one step.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from dimlab.diffusion.schedules import DiscreteSDSchedule, NoiseSchedule
from dimlab.diffusion.skip_tune import skip_tune_scales  # re-exported: the other upsampling-time trick

__all__ = [
    "TAU_BOOKKEEPING",
    "avg_pool_down",
    "nearest_up",
    "skip_tune_scales",
    "snr_matched_step",
    "upsample_guided_model_fn",
]

TAU_BOOKKEEPING = ("clean", "official")


def avg_pool_down(x: torch.Tensor, m: int) -> torch.Tensor:
    """``D``: mean over non-overlapping ``m x m`` blocks of the last two dims (``H`` and ``W`` divisible by ``m``)."""
    return F.avg_pool2d(x, kernel_size=m, stride=m)


def nearest_up(x: torch.Tensor, m: int) -> torch.Tensor:
    """``U``: nearest-neighbour upsampling by the integer factor ``m`` (each pixel becomes an ``m x m`` block)."""
    return x.repeat_interleave(m, dim=-2).repeat_interleave(m, dim=-1)


def _step_index(t_net: torch.Tensor, schedule: DiscreteSDSchedule, official: bool) -> torch.Tensor:
    """``floor(t * N)`` as int64 in ``0..N``, from the network time ``t_net = t * N``."""
    if official:
        # float32 continuous time, then float32 multiply and truncation, as Schedule.cum_alpha does
        t32 = (t_net.to(torch.float32) / schedule.num_steps).to(torch.float32)
        idx = (t32 * schedule.num_steps).long()
    else:
        idx = torch.floor(t_net.to(torch.float64) + 1e-3).long()
    return idx.clamp(0, schedule.num_steps)


def _preset_snrs(schedule: DiscreteSDSchedule, official: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Candidate SNRs and the continuous time each candidate maps to."""
    n_steps = schedule.num_steps
    acp = schedule.alphas_cumprod
    snr = acp / (1.0 - acp)  # index 0 is +inf (clean data)
    if not official:
        steps = torch.arange(1, n_steps + 1)
        return snr[steps], steps.to(torch.float64) / n_steps
    j = torch.arange(n_steps)
    normed = (torch.arange(n_steps, dtype=torch.float32).flip(0) / n_steps).to(torch.float32)
    normed[-1] = 1e-5
    idx = (normed * n_steps).long()
    return snr[idx], 1.0 - j.to(torch.float64) / (n_steps - 1)


def snr_matched_step(
    t_net: torch.Tensor, schedule: DiscreteSDSchedule, m: int, tau_bookkeeping: str = "clean"
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(alpha_bar_t, tau)`` for network times ``t_net``: the table value at ``floor(t N)`` and the continuous time
    of the step whose SNR is closest to ``m^2 SNR(t)``, clamped to ``tau <= t``. Both float64, shape ``(B,)``."""
    if tau_bookkeeping not in TAU_BOOKKEEPING:
        raise ValueError(f"unknown tau_bookkeeping {tau_bookkeeping!r}; expected one of {TAU_BOOKKEEPING}")
    official = tau_bookkeeping == "official"
    idx = _step_index(t_net.cpu(), schedule, official)
    acp = schedule.alphas_cumprod[idx]
    target = m**2 * acp / (1.0 - acp)
    snrs, taus = _preset_snrs(schedule, official)
    best = (target[:, None] - snrs[None, :]).abs().argmin(dim=1)
    tau = torch.minimum(taus[best], schedule.continuous_time(t_net.cpu()))
    return acp.to(t_net.device), tau.to(t_net.device)


def upsample_guided_model_fn(
    model_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    schedule: NoiseSchedule,
    m: int,
    theta: float = 1.0,
    eta: float = 0.3,
    T: float = 1.0,
    tau_bookkeeping: str = "clean",
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Wrap ``model_fn(x, t_net) -> eps`` with upsample guidance of factor ``m`` (see the module docstring).

    Official settings: ``m = 2`` (1024 px) or ``3`` (1536 px), ``theta = 1``, ``eta = 0.3``, ``T = 1``, the inner
    model_fn CFG-wrapped with ``s = 3``, sampler plain DPM-Solver (``"dpm"``). Needs the discrete schedule (the
    method is defined on its table). ``x`` is ``(B, C, H, W)`` with ``H`` and ``W`` divisible by ``m``; it need
    not be square. The low-resolution pass runs for the whole batch when any sample is active.
    """
    if not isinstance(schedule, DiscreteSDSchedule):
        raise TypeError(f"upsample guidance needs a DiscreteSDSchedule, got {type(schedule).__name__}")
    if not isinstance(m, int) or m < 2:
        raise ValueError(f"upsample guidance factor m must be an integer >= 2, got {m!r}")
    if tau_bookkeeping not in TAU_BOOKKEEPING:
        raise ValueError(f"unknown tau_bookkeeping {tau_bookkeeping!r}; expected one of {TAU_BOOKKEEPING}")

    def guided(x: torch.Tensor, t_net: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[-2] % m or x.shape[-1] % m:
            raise ValueError(
                f"upsample guidance: x must be (B, C, H, W) with H, W divisible by m={m}, got {tuple(x.shape)}"
            )
        t_net = torch.as_tensor(t_net, device=x.device).reshape(-1).expand(x.shape[0])
        eps = model_fn(x, t_net)
        t = schedule.continuous_time(t_net)
        w_t = theta * (t >= (1.0 - eta) * T).to(torch.float64)
        if not bool((w_t > 0).any()):
            return eps
        acp, tau = snr_matched_step(t_net, schedule, m, tau_bookkeeping)
        p = acp + (1.0 - acp) / m**2
        x_low = avg_pool_down(x, m) / torch.sqrt(p).to(x.dtype).view(-1, 1, 1, 1)
        eps_low = model_fn(x_low, schedule.network_time(tau))
        correction = nearest_up(eps_low / m - avg_pool_down(eps, m), m)
        return eps + w_t.to(eps.dtype).view(-1, 1, 1, 1) * correction

    return guided
