"""Variance-preserving noise schedules in one continuous-time convention.

Both schedules describe ``x_t = alpha_t x_0 + sigma_t eps`` with ``alpha_t^2 + sigma_t^2 = 1`` for a continuous
time ``t`` in ``[0, T]`` (``T = 1``), and expose the interface of DPM-Solver's ``NoiseScheduleVP``
(``marginal_log_mean_coeff``, ``marginal_alpha``, ``marginal_std``, ``marginal_lambda``, ``inverse_lambda``) so
that every sampler in :mod:`dimlab.diffusion` works with either.

* :class:`DiscreteSDSchedule` is the ImageNet (latent) schedule: Stable Diffusion's "scaled linear" betas over
  ``N = 1000`` steps. Step ``n`` sits at ``t_n = n / N`` and ``log alpha`` is interpolated piecewise-linearly between
  the steps, as DPM-Solver's ``'discrete'`` mode does. The network receives ``n = t * N``.
* :class:`VPSDESchedule` is the CIFAR-10 (pixel) schedule: the continuous VP-SDE with ``beta(t) = 0.1 + 19.9 t``,
  so ``alpha_bar(t) = exp(-(0.1 t + 9.95 t^2))``. The network receives ``t * 999`` (U-ViT's ``sde.py``).

All methods are torch functions of a time tensor and compute in that tensor's dtype, so float64 works end to end.
diffusers' schedulers are not used: they are indexed by integer timesteps and do not provide ``inverse_lambda`` or
the continuous interpolation DPM-Solver needs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from dimlab.diffusion import rng

__all__ = ["SCHEDULES", "DiscreteSDSchedule", "NoiseSchedule", "VPSDESchedule", "build_schedule"]


class NoiseSchedule(ABC):
    """Common interface of a VP noise schedule; subclasses define ``log alpha_t`` and the time conventions.

    Attributes:
        T: the largest continuous time (sampling starts here).
        eps: the default last time of the DPM-Solver samplers.
        name: the key under which :func:`build_schedule` knows the schedule.
    """

    T: float = 1.0
    eps: float
    name: str

    @abstractmethod
    def marginal_log_mean_coeff(self, t: torch.Tensor) -> torch.Tensor:
        """``log alpha_t`` for continuous times ``t`` (same shape and dtype as ``t``)."""

    @abstractmethod
    def inverse_lambda(self, lamb: torch.Tensor) -> torch.Tensor:
        """The continuous time whose half-log-SNR ``lambda_t = log(alpha_t / sigma_t)`` equals ``lamb``."""

    @abstractmethod
    def beta(self, t: torch.Tensor) -> torch.Tensor:
        """Instantaneous ``beta(t) = -2 d(log alpha_t)/dt`` of the forward SDE ``dx = -beta/2 x dt + sqrt(beta) dW``."""

    @abstractmethod
    def network_time(self, t: torch.Tensor) -> torch.Tensor:
        """The float32 time value the backbone receives for continuous time ``t``."""

    @abstractmethod
    def continuous_time(self, t_net: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`network_time`, returned in float64."""

    @abstractmethod
    def sample_training_time(
        self, batch: int, device: torch.device | str, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Draw ``batch`` training times (float32, continuous convention) as the official trainers do."""

    def marginal_alpha(self, t: torch.Tensor) -> torch.Tensor:
        """``alpha_t``, the signal coefficient."""
        return torch.exp(self.marginal_log_mean_coeff(t))

    def marginal_std(self, t: torch.Tensor) -> torch.Tensor:
        """``sigma_t = sqrt(1 - alpha_t^2)``, the noise coefficient (0 at ``t = 0``)."""
        return torch.sqrt(-torch.expm1(2.0 * self.marginal_log_mean_coeff(t)))

    def marginal_lambda(self, t: torch.Tensor) -> torch.Tensor:
        """Half log-SNR ``lambda_t = log alpha_t - log sigma_t`` (``+inf`` at ``t = 0``)."""
        log_alpha = self.marginal_log_mean_coeff(t)
        return log_alpha - 0.5 * torch.log(-torch.expm1(2.0 * log_alpha))

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(alpha_t, sigma_t)`` such that ``x_t = alpha_t x_0 + sigma_t eps``."""
        return self.marginal_alpha(t), self.marginal_std(t)

    def alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        """``alpha_bar_t = alpha_t^2`` (the DDPM cumulative product)."""
        return torch.exp(2.0 * self.marginal_log_mean_coeff(t))


def _logaddexp0(x: torch.Tensor) -> torch.Tensor:
    """``log(1 + e^x)`` computed stably (``softplus`` without its large-input threshold)."""
    return torch.logaddexp(torch.zeros_like(x), x)


class DiscreteSDSchedule(NoiseSchedule):
    """Stable Diffusion's "scaled linear" discrete schedule, read in continuous time as DPM-Solver does.

    ``betas = linspace(sqrt(beta_start), sqrt(beta_end), N)^2`` for steps ``n = 1..N``; ``alpha_bar_n`` is their
    cumulative product of ``1 - beta`` and ``alpha_bar_0 = 1``. Continuous time ``t_n = n / N``; between steps
    ``log alpha`` is linear in ``t``. Beyond the official table (steps ``1..N``) a knot ``(t = 0, log alpha = 0)``
    is added so that ``t`` in ``[0, 1/N]`` means something (DPM-Solver extrapolates there instead; samplers never go
    below ``eps = 1/N`` so nothing official changes). Times above 1 extrapolate the last segment.

    The table is kept in float64; the official code builds it from float32 betas, a difference below 1e-7.
    """

    name = "sd_discrete"

    def __init__(
        self,
        num_steps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        eps: float | None = None,
    ) -> None:
        if num_steps < 2:
            raise ValueError(f"DiscreteSDSchedule: num_steps must be >= 2, got {num_steps}")
        if not 0.0 < beta_start <= beta_end < 1.0:
            raise ValueError(
                f"DiscreteSDSchedule: need 0 < beta_start <= beta_end < 1, got {beta_start}, {beta_end}"
            )
        self.num_steps = num_steps
        self.eps = 1.0 / num_steps if eps is None else float(eps)
        self.betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_steps, dtype=torch.float64) ** 2
        log_alpha = 0.5 * torch.cumsum(torch.log1p(-self.betas), dim=0)
        # index n holds step n; index 0 is the clean data (alpha = 1).
        self.log_alpha_table = torch.cat([torch.zeros(1, dtype=torch.float64), log_alpha])
        self.alphas_cumprod = torch.exp(2.0 * self.log_alpha_table)
        self._cache: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    def __repr__(self) -> str:
        return f"DiscreteSDSchedule(num_steps={self.num_steps}, eps={self.eps})"

    def _table(self, like: torch.Tensor) -> torch.Tensor:
        key = (like.device, like.dtype)
        if key not in self._cache:
            self._cache[key] = self.log_alpha_table.to(device=like.device, dtype=like.dtype)
        return self._cache[key]

    def _segment(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Left step index of the interpolation segment holding ``t`` and the position within it."""
        pos = (t * self.num_steps).clamp(min=0.0)
        idx = pos.floor().long().clamp(0, self.num_steps - 1)
        return idx, pos - idx.to(pos.dtype)

    def marginal_log_mean_coeff(self, t: torch.Tensor) -> torch.Tensor:
        """Piecewise-linear ``log alpha_t`` through the knots ``(n / N, 0.5 log alpha_bar_n)``."""
        table = self._table(t)
        idx, frac = self._segment(t)
        return table[idx] + frac * (table[idx + 1] - table[idx])

    def inverse_lambda(self, lamb: torch.Tensor) -> torch.Tensor:
        """Invert the piecewise-linear ``log alpha`` at ``log alpha = -0.5 log(1 + e^(-2 lambda))``."""
        neg_table = -self._table(lamb)  # increasing in n
        neg_log_alpha = 0.5 * _logaddexp0(-2.0 * lamb)
        idx = (torch.searchsorted(neg_table, neg_log_alpha.contiguous()) - 1).clamp(0, self.num_steps - 1)
        lo, hi = neg_table[idx], neg_table[idx + 1]
        return (idx.to(lamb.dtype) + (neg_log_alpha - lo) / (hi - lo)) / self.num_steps

    def beta(self, t: torch.Tensor) -> torch.Tensor:
        """Piecewise-constant ``-2 d(log alpha)/dt = -N log(1 - beta_n)`` on segment ``n``."""
        table = self._table(t)
        idx, _ = self._segment(t)
        return -2.0 * self.num_steps * (table[idx + 1] - table[idx])

    def network_time(self, t: torch.Tensor) -> torch.Tensor:
        """``n = t * N`` as float32; values within 1e-4 of an integer are snapped to it.

        ``n / N`` is not exact in float32, so ``t * N`` can land one ulp off the integer step the network was
        trained on (this matters for the bf16 rounding of :func:`dimlab.diffusion.loss.epsilon_loss`).
        """
        pos = t.to(torch.float64) * self.num_steps
        nearest = torch.round(pos)
        pos = torch.where((pos - nearest).abs() < 1e-4, nearest, pos)
        return pos.to(torch.float32)

    def continuous_time(self, t_net: torch.Tensor) -> torch.Tensor:
        """``t = n / N`` in float64."""
        return t_net.to(torch.float64) / self.num_steps

    def sample_training_time(
        self, batch: int, device: torch.device | str, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """``t = n / N`` with ``n ~ Uniform{1..N}`` (``train_ldm_discrete.py`` ``Schedule.sample``)."""
        n = rng.randint(1, self.num_steps + 1, (batch,), device=device, generator=generator)
        return (n.to(torch.float64) / self.num_steps).to(torch.float32)

    def alpha_bar_at_step(self, n: torch.Tensor) -> torch.Tensor:
        """``alpha_bar_n`` read from the table at integer steps ``n`` in ``0..N`` (float64)."""
        n = torch.as_tensor(n)
        if n.dtype.is_floating_point:
            raise TypeError(f"alpha_bar_at_step expects integer steps, got dtype {n.dtype}")
        if (n < 0).any() or (n > self.num_steps).any():
            raise ValueError(f"alpha_bar_at_step: steps must lie in 0..{self.num_steps}, got {n.tolist()}")
        return self.alphas_cumprod.to(n.device)[n]


class VPSDESchedule(NoiseSchedule):
    """Continuous VP-SDE with linear ``beta(t) = beta_min + t (beta_max - beta_min)`` (Song et al.; U-ViT CIFAR).

    ``log alpha_t = -t^2 (beta_max - beta_min) / 4 - t beta_min / 2``. Training draws ``t ~ U(0, 1)`` and the
    network receives ``t * 999`` (``sde.py`` ``ScoreModel.predict``). ``eps = 1e-4`` is the DPM-Solver end time
    of U-ViT's CIFAR monitoring; the Euler-Maruyama sampler uses its own ``1e-3``.
    """

    name = "vp_sde"

    def __init__(
        self, beta_min: float = 0.1, beta_max: float = 20.0, eps: float = 1e-4, network_scale: float = 999.0
    ) -> None:
        if not 0.0 <= beta_min < beta_max:
            raise ValueError(f"VPSDESchedule: need 0 <= beta_min < beta_max, got {beta_min}, {beta_max}")
        self.beta_min = float(beta_min)
        self.beta_max = float(beta_max)
        self.eps = float(eps)
        self.network_scale = float(network_scale)

    def __repr__(self) -> str:
        return f"VPSDESchedule(beta_min={self.beta_min}, beta_max={self.beta_max}, eps={self.eps})"

    def marginal_log_mean_coeff(self, t: torch.Tensor) -> torch.Tensor:
        """``-t^2 (beta_max - beta_min) / 4 - t beta_min / 2``."""
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def inverse_lambda(self, lamb: torch.Tensor) -> torch.Tensor:
        """Positive root of ``(b1 - b0) t^2 / 2 + b0 t = log(1 + e^(-2 lambda))``, in a cancellation-free form."""
        spread = self.beta_max - self.beta_min
        rhs = 2.0 * spread * _logaddexp0(-2.0 * lamb)
        return rhs / (torch.sqrt(self.beta_min**2 + rhs) + self.beta_min) / spread

    def beta(self, t: torch.Tensor) -> torch.Tensor:
        """``beta_min + t (beta_max - beta_min)``."""
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def network_time(self, t: torch.Tensor) -> torch.Tensor:
        """``t * 999`` as float32."""
        return (t.to(torch.float64) * self.network_scale).to(torch.float32)

    def continuous_time(self, t_net: torch.Tensor) -> torch.Tensor:
        """``t = t_net / 999`` in float64."""
        return t_net.to(torch.float64) / self.network_scale

    def sample_training_time(
        self, batch: int, device: torch.device | str, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """``t ~ U(0, 1)`` (``sde.py`` ``SDE.sample``)."""
        return rng.rand((batch,), device=device, generator=generator) * self.T


SCHEDULES: dict[str, type[NoiseSchedule]] = {
    DiscreteSDSchedule.name: DiscreteSDSchedule,
    VPSDESchedule.name: VPSDESchedule,
}


def build_schedule(name: str, **kwargs) -> NoiseSchedule:
    """Build a schedule by name: ``"sd_discrete"`` (ImageNet latents) or ``"vp_sde"`` (CIFAR pixels)."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown noise schedule {name!r}; expected one of {sorted(SCHEDULES)}")
    return SCHEDULES[name](**kwargs)
