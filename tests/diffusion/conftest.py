"""Analytic denoisers for the diffusion tests.

For data ``x0 ~ N(mu, s^2)`` (per coordinate) and ``x_t = alpha_t x0 + sigma_t eps``, the marginal is
``x_t ~ N(alpha_t mu, v_t)`` with ``v_t = alpha_t^2 s^2 + sigma_t^2``; the score is ``-(x_t - alpha_t mu) / v_t``,
so the exact noise predictor is ``eps*(x_t, t) = -sigma_t * score = sigma_t (x_t - alpha_t mu) / v_t``.
Along the probability-flow ODE the standardised coordinate ``(x_t - alpha_t mu) / sqrt(v_t)`` is constant, which
gives the exact flow map used to check the ODE solvers sample by sample.

For a mixture of two classes (means ``-mu`` and ``+mu``, equal weights), the unconditional ("null") predictor is
``sigma_t * sum_c r_c(x) (x - alpha_t mu_c) / v_t`` with the posterior class responsibilities ``r_c``.
"""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread():
    """These tests push many tiny tensors through long loops; one thread is several times faster on 2 cores."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _col(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (like.dim() - 1)))


class GaussianOracle:
    """Exact epsilon for ``x0 ~ N(mu, s^2 I)`` under ``schedule``, plus the exact marginals and ODE flow map."""

    def __init__(self, schedule, mu: float, s: float) -> None:
        self.schedule, self.mu, self.s = schedule, mu, s
        self.calls: list[torch.Tensor] = []

    def marginal(self, t: float) -> tuple[float, float]:
        """Mean and standard deviation of ``x_t``."""
        a, sg = self.schedule.alpha_sigma(torch.tensor([t], dtype=torch.float64))
        return float(a * self.mu), float(torch.sqrt(a**2 * self.s**2 + sg**2))

    def eps(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a, sg = self.schedule.alpha_sigma(t.to(torch.float64))
        a, sg = _col(a, x), _col(sg, x)
        return (sg * (x.to(torch.float64) - a * self.mu) / (a**2 * self.s**2 + sg**2)).to(x.dtype)

    def model_fn(self, x: torch.Tensor, t_net: torch.Tensor) -> torch.Tensor:
        """Sampler interface: records the network times it was called with."""
        assert t_net.dtype == torch.float32 and t_net.shape == (x.shape[0],)
        self.calls.append(t_net.clone())
        # all samples share one time in these tests: evaluate the schedule once
        return self.eps(x, self.schedule.continuous_time(t_net[:1]))

    def start(self, z: torch.Tensor, t_start: float = 1.0) -> torch.Tensor:
        """``x`` at ``t_start`` with standardised coordinate ``z`` (a sample of the true marginal)."""
        mean, std = self.marginal(t_start)
        return mean + std * z

    def flow(self, z: torch.Tensor, t_end: float) -> torch.Tensor:
        """Exact probability-flow ODE solution at ``t_end`` for the start point with coordinate ``z``."""
        mean, std = self.marginal(t_end)
        return mean + std * z


class MixtureOracle:
    """Exact class-conditional and null epsilon for two classes with means ``-mu`` (y=0), ``+mu`` (y=1)."""

    null_class = 2

    def __init__(self, schedule, mu: float, s: float) -> None:
        self.schedule, self.mu, self.s = schedule, mu, s

    def __call__(self, x: torch.Tensor, t_net: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        t = self.schedule.continuous_time(t_net).to(x.dtype)
        a, sg = (_col(v, x) for v in self.schedule.alpha_sigma(t))
        v = a**2 * self.s**2 + sg**2
        means = torch.tensor([-self.mu, self.mu], dtype=x.dtype)
        # log N(x; a mu_c, v) per class, summed over coordinates
        logp = torch.stack([-(x - a * m).pow(2).flatten(1).sum(1) / (2 * v.flatten()) for m in means], dim=1)
        resp = torch.softmax(logp, dim=1)
        eps_c = [sg * (x - a * m) / v for m in means]
        eps_null = _col(resp[:, 0], x) * eps_c[0] + _col(resp[:, 1], x) * eps_c[1]
        yc = _col(y, x)
        return torch.where(yc == 0, eps_c[0], torch.where(yc == 1, eps_c[1], eps_null))


@pytest.fixture
def gaussian_oracle():
    """Factory ``gaussian_oracle(schedule, mu, s)``."""
    return GaussianOracle


@pytest.fixture
def mixture_oracle():
    """Factory ``mixture_oracle(schedule, mu, s)``."""
    return MixtureOracle
