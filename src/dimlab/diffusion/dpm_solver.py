"""Single-step DPM-Solver-1/2/3 (Lu et al. 2022) and DPM-Solver++ (data prediction, Lu et al. 2022b).

The official DiM/U-ViT evaluators call DPM-Solver(++) with ``method='fast', order=3, skip_type='time_uniform'``:
``steps + 1`` time points uniform in ``t`` from ``T`` to ``eps``; the solver walks through them with single-step
updates of orders ``fast_orders(steps)`` (mostly 3), each update using the intermediate grid points as its
``s1`` / ``s2`` evaluation times. That costs exactly ``steps`` network evaluations. ``method='singlestep'`` uses
``steps // order`` steps of one order with the default ratios ``r1 = 1/3, r2 = 2/3`` (order 3) or ``r1 = 1/2``.

Written here rather than taken from diffusers' ``DPMSolverSinglestepScheduler`` because that scheduler works on
integer training timesteps, cannot place the intermediate points on a continuous time grid, and so does not
reproduce the official trajectory.

Notation: ``lambda = log(alpha / sigma)``; for an update from ``s`` to ``t``, ``h = lambda_t - lambda_s`` and
``r_i = (lambda_{s_i} - lambda_s) / h``. With ``predict_x0=False`` the model output is the noise prediction;
with ``predict_x0=True`` (DPM-Solver++) it is converted to ``x0 = (x - sigma eps) / alpha``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from rich.progress import track

from dimlab.diffusion.broadcast import per_sample
from dimlab.diffusion.schedules import NoiseSchedule

__all__ = ["SKIP_TYPES", "DPMSolver", "fast_orders", "time_grid"]

SKIP_TYPES = ("time_uniform", "logSNR", "time_quadratic")


def fast_orders(steps: int, order: int = 3) -> list[int]:
    """Per-update orders of DPM-Solver-fast; they sum to ``steps`` (= NFE).

    Order 3: ``K = steps // 3 + 1`` updates, ``[3]*(K-2) + [2, 1]`` if ``steps % 3 == 0``, ``[3]*(K-1) + [1]`` if
    ``== 1``, ``[3]*(K-1) + [2]`` if ``== 2``. Order 2: ``[2] * (steps // 2)`` plus a final 1 when ``steps`` is odd.
    Order 1: ``[1] * steps``.
    """
    if steps < 1:
        raise ValueError(f"fast_orders: steps must be >= 1, got {steps}")
    if order == 3:
        if steps < 3:
            raise ValueError(f"fast_orders: order 3 needs steps >= 3, got {steps}")
        k = steps // 3 + 1
        if steps % 3 == 0:
            return [3] * (k - 2) + [2, 1]
        if steps % 3 == 1:
            return [3] * (k - 1) + [1]
        return [3] * (k - 1) + [2]
    if order == 2:
        return [2] * (steps // 2) + ([1] if steps % 2 else [])
    if order == 1:
        return [1] * steps
    raise ValueError(f"fast_orders: order must be 1, 2 or 3, got {order}")


def time_grid(
    schedule: NoiseSchedule,
    skip_type: str,
    t_start: float,
    t_end: float,
    num_intervals: int,
    device: torch.device | str,
    dtype: torch.dtype,
) -> torch.Tensor:
    """``num_intervals + 1`` decreasing times from ``t_start`` to ``t_end``.

    ``time_uniform``: uniform in ``t``; ``logSNR``: uniform in ``lambda``; ``time_quadratic``: uniform in
    ``sqrt(t)``.
    """
    if skip_type == "time_uniform":
        return torch.linspace(t_start, t_end, num_intervals + 1, device=device, dtype=dtype)
    if skip_type == "time_quadratic":
        return torch.linspace(t_start**0.5, t_end**0.5, num_intervals + 1, device=device, dtype=dtype) ** 2
    if skip_type == "logSNR":
        ends = schedule.marginal_lambda(torch.tensor([t_start, t_end], device=device, dtype=dtype))
        lambdas = torch.linspace(
            float(ends[0]), float(ends[1]), num_intervals + 1, device=device, dtype=dtype
        )
        grid = schedule.inverse_lambda(lambdas)
        grid[0], grid[-1] = t_start, t_end
        return grid
    raise ValueError(f"unknown skip_type {skip_type!r}; expected one of {SKIP_TYPES}")


class DPMSolver:
    """Single-step DPM-Solver (``predict_x0=False``) or DPM-Solver++ (``predict_x0=True``).

    ``model_fn(x, t_net) -> eps`` receives ``schedule.network_time(t)``. Arithmetic runs in the dtype of the
    initial ``x`` (float32 for real sampling, float64 in the tests); the network output is cast to it.
    """

    def __init__(
        self,
        model_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        schedule: NoiseSchedule,
        predict_x0: bool,
    ) -> None:
        self.model_fn = model_fn
        self.schedule = schedule
        self.predict_x0 = predict_x0
        self.nfe = 0

    def model_output(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Noise prediction, or the implied data prediction for DPM-Solver++."""
        self.nfe += 1
        eps = self.model_fn(x, self.schedule.network_time(t).expand(x.shape[0])).to(x.dtype)
        if not self.predict_x0:
            return eps
        alpha, sigma = self.schedule.alpha_sigma(t)
        return (x - per_sample(sigma, x) * eps) / per_sample(alpha, x)

    def update(self, x: torch.Tensor, times: Sequence[torch.Tensor]) -> torch.Tensor:
        """One single-step update of order ``len(times) - 1`` along ``times = [s, (s1, (s2,)) t]``.

        Each entry is a ``(1,)`` (shared) or ``(B,)`` (per-sample) time tensor; the intermediate ones are where the
        extra model evaluations happen.
        """
        order = len(times) - 1
        if order not in (1, 2, 3):
            raise ValueError(f"DPMSolver.update: need 2 to 4 time points (order 1-3), got {len(times)}")
        sch = self.schedule
        lambdas = [sch.marginal_lambda(tt) for tt in times]
        log_alphas = [sch.marginal_log_mean_coeff(tt) for tt in times]
        sigmas = [sch.marginal_std(tt) for tt in times]
        h = lambdas[-1] - lambdas[0]
        ratios = [(lam - lambdas[0]) / h for lam in lambdas[1:-1]]
        m_s = self.model_output(x, times[0])
        if self.predict_x0:
            return self._update_data(x, times, ratios, h, log_alphas, sigmas, m_s)
        return self._update_noise(x, times, ratios, h, log_alphas, sigmas, m_s)

    def _update_data(self, x, times, ratios, h, log_alphas, sigmas, d_s):
        """DPM-Solver++ updates (data prediction ``D``); exponential integrator in ``lambda``."""

        def first(idx: int, rh: torch.Tensor) -> torch.Tensor:
            # x_u = sigma_u / sigma_s x - alpha_u (e^{-r h} - 1) D_s
            return (
                per_sample(sigmas[idx] / sigmas[0], x) * x
                - per_sample(torch.exp(log_alphas[idx]) * torch.expm1(-rh), x) * d_s
            )

        order = len(times) - 1
        if order == 1:
            return first(1, h)
        if order == 2:
            (r1,) = ratios
            d_s1 = self.model_output(first(1, r1 * h), times[1])
            coef = torch.exp(log_alphas[2]) * torch.expm1(-h) * (0.5 / r1)
            return first(2, h) - per_sample(coef, x) * (d_s1 - d_s)
        r1, r2 = ratios
        d_s1 = self.model_output(first(1, r1 * h), times[1])
        phi_22 = torch.expm1(-r2 * h) / (r2 * h) + 1.0
        x_s2 = first(2, r2 * h) + per_sample((r2 / r1) * torch.exp(log_alphas[2]) * phi_22, x) * (d_s1 - d_s)
        d_s2 = self.model_output(x_s2, times[2])
        phi_2 = torch.expm1(-h) / h + 1.0
        return first(3, h) + per_sample(torch.exp(log_alphas[3]) * phi_2 / r2, x) * (d_s2 - d_s)

    def _update_noise(self, x, times, ratios, h, log_alphas, sigmas, e_s):
        """DPM-Solver updates (noise prediction ``eps``)."""

        def first(idx: int, rh: torch.Tensor) -> torch.Tensor:
            # x_u = alpha_u / alpha_s x - sigma_u (e^{r h} - 1) eps_s
            return (
                per_sample(torch.exp(log_alphas[idx] - log_alphas[0]), x) * x
                - per_sample(sigmas[idx] * torch.expm1(rh), x) * e_s
            )

        order = len(times) - 1
        if order == 1:
            return first(1, h)
        if order == 2:
            (r1,) = ratios
            e_s1 = self.model_output(first(1, r1 * h), times[1])
            coef = sigmas[2] * torch.expm1(h) * (0.5 / r1)
            return first(2, h) - per_sample(coef, x) * (e_s1 - e_s)
        r1, r2 = ratios
        e_s1 = self.model_output(first(1, r1 * h), times[1])
        phi_22 = torch.expm1(r2 * h) / (r2 * h) - 1.0
        x_s2 = first(2, r2 * h) - per_sample((r2 / r1) * sigmas[2] * phi_22, x) * (e_s1 - e_s)
        e_s2 = self.model_output(x_s2, times[2])
        phi_2 = torch.expm1(h) / h - 1.0
        return first(3, h) - per_sample(sigmas[3] * phi_2 / r2, x) * (e_s2 - e_s)

    def _intermediate(
        self, s: torch.Tensor, t: torch.Tensor, fractions: Sequence[float]
    ) -> list[torch.Tensor]:
        """Times at the given fractions of the ``lambda`` interval from ``s`` to ``t``."""
        lam_s, lam_t = self.schedule.marginal_lambda(s), self.schedule.marginal_lambda(t)
        return [self.schedule.inverse_lambda(lam_s + f * (lam_t - lam_s)) for f in fractions]

    def sample(
        self,
        x: torch.Tensor,
        *,
        steps: int,
        order: int = 3,
        method: str = "fast",
        skip_type: str = "time_uniform",
        t_start: float | None = None,
        t_end: float | None = None,
        progress: bool = False,
    ) -> torch.Tensor:
        """Integrate the probability-flow ODE from ``t_start`` (default ``T``) to ``t_end`` (default ``eps``).

        Returns ``x`` at ``t_end`` (no extra denoising step, as in the official evaluators).
        """
        sch = self.schedule
        t_start = sch.T if t_start is None else float(t_start)
        t_end = sch.eps if t_end is None else float(t_end)
        if not 0.0 < t_end < t_start:
            raise ValueError(
                f"DPMSolver.sample: need 0 < t_end < t_start, got t_end={t_end}, t_start={t_start}"
            )

        def vec(v: torch.Tensor) -> torch.Tensor:
            # coefficients are computed once per time and broadcast over the batch
            return v.reshape(1)

        if method == "fast":
            orders = fast_orders(steps, order)
            grid = time_grid(sch, skip_type, t_start, t_end, steps, x.device, x.dtype)
            plan, i = [], 0
            for o in orders:
                plan.append([vec(grid[j]) for j in range(i, i + o + 1)])
                i += o
        elif method == "singlestep":
            if order not in (1, 2, 3):
                raise ValueError(f"DPMSolver.sample: order must be 1, 2 or 3, got {order}")
            if steps < order:
                raise ValueError(
                    f"DPMSolver.sample: singlestep order {order} needs steps >= {order}, got {steps}"
                )
            grid = time_grid(sch, skip_type, t_start, t_end, steps // order, x.device, x.dtype)
            fractions = {1: [], 2: [0.5], 3: [1.0 / 3.0, 2.0 / 3.0]}[order]
            plan = []
            for j in range(steps // order):
                s, t = vec(grid[j]), vec(grid[j + 1])
                plan.append([s, *self._intermediate(s, t, fractions), t])
        else:
            raise ValueError(f"unknown DPM-Solver method {method!r}; expected 'fast' or 'singlestep'")

        iterator = plan
        if progress:
            iterator = track(plan, description="DPM-Solver" + ("++" if self.predict_x0 else ""))
        for times in iterator:
            x = self.update(x, times)
        return x
