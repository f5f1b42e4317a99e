"""Samplers against the exact Gaussian denoiser: ODE accuracy and order, sample statistics, step bookkeeping."""

from __future__ import annotations

import pytest
import torch

from dimlab.diffusion.dpm_solver import fast_orders, time_grid
from dimlab.diffusion.samplers import SAMPLERS, ddpm_times, sample
from dimlab.diffusion.schedules import build_schedule

F64 = torch.float64
SCHEDULES = ["sd_discrete", "vp_sde"]


def _z(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 1, generator=torch.Generator().manual_seed(seed), dtype=F64)


def test_sampler_names():
    assert SAMPLERS == ("dpm++", "dpm", "ddpm", "euler_maruyama")


@pytest.mark.parametrize("steps", [50, 49, 48, 20])
def test_fast_order_plan_spends_exactly_steps_evaluations(steps, gaussian_oracle):
    orders = fast_orders(steps, 3)
    assert sum(orders) == steps
    assert orders[:-2] == [3] * (len(orders) - 2)
    expected_tail = {0: [3, 2, 1], 1: [3, 1], 2: [3, 2]}[steps % 3]
    assert orders[-len(expected_tail) :] == expected_tail
    assert len(orders) == {0: steps // 3 + 1, 1: steps // 3 + 1, 2: steps // 3 + 1}[steps % 3]
    sch = build_schedule("sd_discrete")
    oracle = gaussian_oracle(sch, 0.3, 1.0)
    sample(oracle.model_fn, sch, oracle.start(_z(8)), sampler="dpm++", steps=steps)
    assert len(oracle.calls) == steps


def test_official_dpm_solver_pp_visits_the_uniform_grid():
    """50 steps, order 3 'fast', time_uniform, eps 1/1000: the model sees t*1000 at the first 50 of 51 grid points."""
    sch = build_schedule("sd_discrete")
    seen = []

    def model_fn(x, t_net):
        seen.append(float(t_net[0]))
        return torch.zeros_like(x)

    sample(model_fn, sch, torch.zeros(2, 1), sampler="dpm++", steps=50)
    grid = torch.linspace(1.0, 1e-3, 51, dtype=F64)[:-1] * 1000
    assert seen == pytest.approx(grid.tolist(), abs=1e-3)
    assert fast_orders(50) == [3] * 16 + [2]


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("sampler,tol", [("dpm++", 5e-4), ("dpm", 2e-3)])
def test_dpm_solvers_follow_the_exact_flow_map(name, sampler, tol, gaussian_oracle):
    sch = build_schedule(name)
    oracle = gaussian_oracle(sch, mu=0.5, s=1.0)
    z = torch.linspace(-3, 3, 61, dtype=F64).view(-1, 1)
    out = sample(oracle.model_fn, sch, oracle.start(z), sampler=sampler, steps=60, skip_type="logSNR")
    err = float((out - oracle.flow(z, sch.eps)).abs().max())
    assert err < tol


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("sampler", ["dpm++", "dpm"])
@pytest.mark.parametrize("order,min_ratio", [(1, 1.7), (2, 3.0), (3, 5.0)])
def test_single_step_solvers_converge_at_their_order(name, sampler, order, min_ratio, gaussian_oracle):
    """Doubling the number of steps divides the global error by about 2^order."""
    sch = build_schedule(name)
    oracle = gaussian_oracle(sch, mu=0.5, s=1.0)
    z = torch.linspace(-3, 3, 31, dtype=F64).view(-1, 1)
    errors = []
    for k in (24, 48):
        out = sample(
            oracle.model_fn,
            sch,
            oracle.start(z),
            sampler=sampler,
            steps=k * order,
            order=order,
            method="singlestep",
            skip_type="logSNR",
        )
        errors.append(float((out - oracle.flow(z, sch.eps)).abs().max()))
    assert errors[0] / errors[1] > min_ratio


@pytest.mark.parametrize("name", SCHEDULES)
def test_official_settings_reach_the_data_distribution(name, gaussian_oracle):
    """DPM-Solver++ 50 steps, time_uniform (the official evaluator) on 20k samples of N(0.5, 1)."""
    sch = build_schedule(name)
    oracle = gaussian_oracle(sch, mu=0.5, s=1.0)
    z = _z(20000)
    out = sample(oracle.model_fn, sch, oracle.start(z), sampler="dpm++", steps=50)
    assert float(out.mean()) == pytest.approx(0.5, abs=0.03)
    assert float(out.var()) == pytest.approx(1.0, rel=0.05)


def test_official_settings_converge_with_more_steps(gaussian_oracle):
    """Time-uniform steps are coarse near t_end (the last update spans a large lambda interval), so the official
    setting is much less accurate than logSNR steps; on the discrete schedule its error still falls with steps."""
    sch = build_schedule("sd_discrete")
    oracle = gaussian_oracle(sch, mu=0.5, s=1.0)
    z = torch.linspace(-3, 3, 61, dtype=F64).view(-1, 1)
    errors = []
    for steps in (25, 50, 100, 200):
        out = sample(oracle.model_fn, sch, oracle.start(z), sampler="dpm++", steps=steps)
        errors.append(float((out - oracle.flow(z, sch.eps)).abs().max()))
    assert errors[0] > errors[1] > errors[2] > errors[3]
    assert errors[1] < 0.03


def test_ddpm_reaches_the_data_distribution(gaussian_oracle):
    sch = build_schedule("sd_discrete")
    oracle = gaussian_oracle(sch, mu=0.5, s=1.0)
    out = sample(
        oracle.model_fn,
        sch,
        oracle.start(_z(20000)),
        sampler="ddpm",
        steps=1000,
        generator=torch.Generator().manual_seed(1),
    )
    assert float(out.mean()) == pytest.approx(0.5, abs=0.03)
    assert float(out.var()) == pytest.approx(1.0, rel=0.04)


def test_euler_maruyama_reaches_the_data_distribution(gaussian_oracle):
    sch = build_schedule("vp_sde")
    oracle = gaussian_oracle(sch, mu=0.5, s=1.0)
    out = sample(
        oracle.model_fn,
        sch,
        oracle.start(_z(20000)),
        sampler="euler_maruyama",
        steps=1000,
        generator=torch.Generator().manual_seed(1),
    )
    assert float(out.mean()) == pytest.approx(0.5, abs=0.03)
    assert float(out.var()) == pytest.approx(1.0, rel=0.04)
    # the model saw the grid linspace(1e-3, 1, 1000) from the top, in network time t * 999
    seen = torch.stack([c[0] for c in oracle.calls]).to(F64)
    expected = torch.linspace(1e-3, 1.0, 1000, dtype=F64).flip(0) * 999
    torch.testing.assert_close(seen, expected, rtol=1e-6, atol=1e-4)


def test_ddpm_strided_grid():
    sch = build_schedule("sd_discrete")
    grid = ddpm_times(sch, 50, "cpu", F64) * 1000
    assert grid.round().tolist() == list(range(1000, 0, -20)) + [0]
    grid = ddpm_times(sch, 1000, "cpu", F64) * 1000
    assert grid.round().tolist() == list(range(1000, -1, -1))


@pytest.mark.parametrize("sampler", ["ddpm", "euler_maruyama"])
def test_last_stochastic_step_adds_no_noise(sampler, gaussian_oracle):
    """With one step the only jump is the last one: the result cannot depend on the generator."""
    sch = build_schedule("vp_sde")
    oracle = gaussian_oracle(sch, mu=0.5, s=1.0)
    x = oracle.start(_z(16))
    a = sample(oracle.model_fn, sch, x, sampler=sampler, steps=1, generator=torch.Generator().manual_seed(1))
    b = sample(oracle.model_fn, sch, x, sampler=sampler, steps=1, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    c = sample(oracle.model_fn, sch, x, sampler=sampler, steps=3, generator=torch.Generator().manual_seed(1))
    d = sample(oracle.model_fn, sch, x, sampler=sampler, steps=3, generator=torch.Generator().manual_seed(2))
    assert not torch.equal(c, d)


def test_float32_sampling_matches_float64(gaussian_oracle):
    sch = build_schedule("sd_discrete")
    oracle = gaussian_oracle(sch, mu=0.5, s=1.0)
    x = oracle.start(_z(256))
    hi = sample(oracle.model_fn, sch, x, sampler="dpm++", steps=50)
    lo = sample(oracle.model_fn, sch, x.float(), sampler="dpm++", steps=50)
    assert lo.dtype == torch.float32
    assert float((lo.double() - hi).abs().max()) < 1e-4


def test_logsnr_grid_is_uniform_in_lambda():
    sch = build_schedule("sd_discrete")
    grid = time_grid(sch, "logSNR", 1.0, 1e-3, 10, "cpu", F64)
    lam = sch.marginal_lambda(grid)
    torch.testing.assert_close(
        lam.diff(), torch.full((10,), float(lam.diff().mean()), dtype=F64), rtol=1e-8, atol=0
    )
    assert float(grid[0]) == 1.0 and float(grid[-1]) == 1e-3


def test_bad_arguments():
    sch = build_schedule("sd_discrete")
    x = torch.zeros(2, 1)

    def zero(a, t):
        return torch.zeros_like(a)

    with pytest.raises(ValueError, match="unknown sampler"):
        sample(zero, sch, x, sampler="heun")
    with pytest.raises(ValueError, match="t_end"):
        sample(zero, sch, x, sampler="ddpm", t_end=0.01)
    with pytest.raises(ValueError, match="order"):
        sample(zero, sch, x, order=4)
    with pytest.raises(ValueError, match="skip_type"):
        sample(zero, sch, x, skip_type="karras")
    with pytest.raises(ValueError, match="method"):
        sample(zero, sch, x, method="adaptive")
