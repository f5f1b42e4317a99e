"""Noise schedules: table values, closed forms, inverses and time conventions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dimlab.diffusion.schedules import DiscreteSDSchedule, VPSDESchedule, build_schedule

F64 = torch.float64


def _sd_alphas_cumprod_numpy() -> np.ndarray:
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=np.float64) ** 2
    return np.cumprod(1.0 - betas)


def test_build_schedule_names_and_error():
    assert isinstance(build_schedule("sd_discrete"), DiscreteSDSchedule)
    assert isinstance(build_schedule("vp_sde"), VPSDESchedule)
    with pytest.raises(ValueError, match="sd_discrete"):
        build_schedule("cosine")


def test_time_ranges():
    sd, vp = DiscreteSDSchedule(), VPSDESchedule()
    assert (sd.T, sd.eps) == (1.0, 1e-3)
    assert (vp.T, vp.eps) == (1.0, 1e-4)


def test_sd_alpha_bar_matches_cumprod_at_every_step():
    sd = DiscreteSDSchedule()
    expected = _sd_alphas_cumprod_numpy()
    n = torch.arange(1, 1001, dtype=F64)
    got = sd.alpha_bar(n / 1000).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    assert got[0] == pytest.approx(1 - 0.00085, rel=1e-12)
    assert got[-1] == pytest.approx(
        float(np.prod(1 - np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2)), rel=1e-12
    )
    np.testing.assert_allclose(sd.alpha_bar_at_step(torch.arange(0, 1001)).numpy()[1:], expected, rtol=1e-12)
    assert float(sd.alpha_bar_at_step(torch.tensor(0))) == 1.0


def test_sd_log_alpha_is_piecewise_linear_between_steps():
    sd = DiscreteSDSchedule()
    n = torch.arange(1, 1000, dtype=F64)
    left = sd.marginal_log_mean_coeff(n / 1000)
    right = sd.marginal_log_mean_coeff((n + 1) / 1000)
    mid = sd.marginal_log_mean_coeff((n + 0.5) / 1000)
    torch.testing.assert_close(mid, 0.5 * (left + right), rtol=1e-12, atol=0)
    # below the first step the schedule interpolates towards the clean point (t = 0, alpha = 1)
    assert float(sd.marginal_alpha(torch.zeros(1, dtype=F64))) == 1.0
    assert float(sd.marginal_std(torch.zeros(1, dtype=F64))) == 0.0


def test_vp_marginals_closed_form():
    vp = VPSDESchedule()
    t = torch.linspace(0, 1, 101, dtype=F64)
    torch.testing.assert_close(vp.alpha_bar(t), torch.exp(-(0.1 * t + 9.95 * t**2)), rtol=1e-13, atol=0)
    alpha, sigma = vp.alpha_sigma(t)
    torch.testing.assert_close(alpha**2 + sigma**2, torch.ones_like(t), rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(vp.beta(t), 0.1 + 19.9 * t)


@pytest.mark.parametrize("name", ["sd_discrete", "vp_sde"])
def test_inverse_lambda_round_trip(name):
    sch = build_schedule(name)
    t = torch.linspace(sch.eps, 1.0, 997, dtype=F64)
    torch.testing.assert_close(sch.inverse_lambda(sch.marginal_lambda(t)), t, rtol=1e-9, atol=1e-12)
    t32 = t.float()
    torch.testing.assert_close(sch.inverse_lambda(sch.marginal_lambda(t32)), t32, rtol=2e-4, atol=2e-6)


@pytest.mark.parametrize("name", ["sd_discrete", "vp_sde"])
def test_lambda_definition_and_beta_derivative(name):
    sch = build_schedule(name)
    t = (torch.arange(12, 987, 20, dtype=F64) + 0.37) / 1000  # off the discrete knots
    alpha, sigma = sch.alpha_sigma(t)
    torch.testing.assert_close(
        sch.marginal_lambda(t), torch.log(alpha) - torch.log(sigma), rtol=1e-10, atol=1e-12
    )
    h = 1e-7  # inside one discrete segment for these t
    deriv = (sch.marginal_log_mean_coeff(t + h) - sch.marginal_log_mean_coeff(t - h)) / (2 * h)
    torch.testing.assert_close(sch.beta(t), -2 * deriv, rtol=1e-6, atol=1e-9)


def test_network_time_conventions():
    sd, vp = DiscreteSDSchedule(), VPSDESchedule()
    n = torch.arange(1, 1001)
    t32 = (n.to(F64) / 1000).float()
    t_net = sd.network_time(t32)
    assert t_net.dtype == torch.float32
    assert torch.equal(t_net, n.float())
    torch.testing.assert_close(sd.continuous_time(t_net), n.to(F64) / 1000)
    t = torch.tensor([0.0, 0.25, 1.0])
    torch.testing.assert_close(vp.network_time(t), t * 999)
    assert vp.network_time(t).dtype == torch.float32
    torch.testing.assert_close(vp.continuous_time(vp.network_time(t)), t.to(F64), rtol=1e-7, atol=1e-9)
    # a non-grid time is not snapped
    assert float(sd.network_time(torch.tensor([0.5004]))) == pytest.approx(500.4, abs=1e-3)


def test_sample_training_time_conventions():
    sd, vp = DiscreteSDSchedule(), VPSDESchedule()
    g = torch.Generator().manual_seed(0)
    t = sd.sample_training_time(20000, "cpu", generator=g)
    assert t.dtype == torch.float32 and t.shape == (20000,)
    n = sd.network_time(t)
    assert torch.equal(n, n.round())
    assert int(n.min()) == 1 and int(n.max()) == 1000
    assert len(torch.unique(n)) > 990
    again = sd.sample_training_time(20000, "cpu", generator=torch.Generator().manual_seed(0))
    assert torch.equal(t, again)
    u = vp.sample_training_time(20000, "cpu", generator=g)
    assert u.dtype == torch.float32 and float(u.min()) >= 0.0 and float(u.max()) < 1.0
    assert abs(float(u.mean()) - 0.5) < 0.01


def test_bad_arguments():
    with pytest.raises(ValueError, match="beta_start"):
        DiscreteSDSchedule(beta_start=0.02, beta_end=0.01)
    with pytest.raises(TypeError, match="integer"):
        DiscreteSDSchedule().alpha_bar_at_step(torch.tensor([0.5]))
    with pytest.raises(ValueError, match="0..1000"):
        DiscreteSDSchedule().alpha_bar_at_step(torch.tensor([1001]))
