"""Upsample guidance (hand-computed on tiny tensors) and the skip-tune scale ramp."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dimlab.diffusion.schedules import build_schedule
from dimlab.diffusion.skip_tune import skip_tune_scales
from dimlab.diffusion.upsample import snr_matched_step, upsample_guided_model_fn

ACP = np.cumprod(1.0 - np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2)  # alpha_bar_n for n = 1..1000


class Recording:
    """model_fn whose output depends on the input resolution, recording every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __call__(self, x, t_net):
        self.calls.append((x.clone(), t_net.clone()))
        return torch.sin(x) + 0.01 * t_net.view(-1, 1, 1, 1) + (0.5 if x.shape[-1] < 6 else 0.0)


def _snr_matched_step_by_hand(n: int, m: int) -> int:
    target = m**2 * ACP[n - 1] / (1 - ACP[n - 1])
    return int(np.argmin(np.abs(ACP / (1 - ACP) - target))) + 1


def _block_mean(a: np.ndarray, m: int) -> np.ndarray:
    b, c, h, w = a.shape
    out = np.zeros((b, c, h // m, w // m))
    for i in range(h // m):
        for j in range(w // m):
            out[:, :, i, j] = a[:, :, i * m : (i + 1) * m, j * m : (j + 1) * m].mean(axis=(2, 3))
    return out


def test_low_resolution_branch_by_hand():
    sch = build_schedule("sd_discrete")
    x = torch.arange(2 * 1 * 4 * 6, dtype=torch.float32).reshape(2, 1, 4, 6) / 10
    model = Recording()
    t_net = torch.tensor([800.0, 800.0])
    out = upsample_guided_model_fn(model, sch, m=2)(x, t_net)
    assert len(model.calls) == 2
    (x_hi, t_hi), (x_lo, t_lo) = model.calls
    assert torch.equal(x_hi, x) and torch.equal(t_hi, t_net)
    abar = ACP[800 - 1]
    p = abar + (1 - abar) / 4
    expected_low = _block_mean(x.double().numpy(), 2) / np.sqrt(p)
    np.testing.assert_allclose(x_lo.double().numpy(), expected_low, rtol=1e-6)
    tau = _snr_matched_step_by_hand(800, 2)
    assert tau < 800
    assert t_lo.tolist() == [float(tau)] * 2
    eps = model(x, t_net).double().numpy()
    eps_low = model(x_lo, t_lo).double().numpy()
    correction = np.repeat(np.repeat(eps_low / 2 - _block_mean(eps, 2), 2, axis=2), 2, axis=3)
    np.testing.assert_allclose(out.double().numpy(), eps + correction, rtol=1e-5, atol=1e-6)


def test_guidance_switches_off_below_the_threshold_and_scales_with_theta():
    sch = build_schedule("sd_discrete")
    x = torch.randn(1, 2, 6, 6, generator=torch.Generator().manual_seed(0))
    model = Recording()
    off = upsample_guided_model_fn(model, sch, m=3, eta=0.3)(x, torch.tensor([699.0]))
    assert len(model.calls) == 1
    torch.testing.assert_close(off, model(x, torch.tensor([699.0])))
    full = upsample_guided_model_fn(model, sch, m=3, theta=1.0)(x, torch.tensor([700.0]))
    half = upsample_guided_model_fn(model, sch, m=3, theta=0.5)(x, torch.tensor([700.0]))
    eps = model(x, torch.tensor([700.0]))
    assert not torch.allclose(full, eps)
    torch.testing.assert_close(half - eps, 0.5 * (full - eps))
    # per-sample switch in a mixed batch
    model.calls.clear()
    mixed = upsample_guided_model_fn(model, sch, m=3)(x.repeat(2, 1, 1, 1), torch.tensor([900.0, 100.0]))
    torch.testing.assert_close(mixed[1:], model(x, torch.tensor([100.0])))
    assert not torch.allclose(mixed[:1], model(x, torch.tensor([900.0])))


@pytest.mark.parametrize("m,shape", [(2, (2, 4, 8, 12)), (3, (1, 4, 9, 6)), (3, (2, 3, 12, 12))])
def test_shapes_including_non_square(m, shape):
    sch = build_schedule("sd_discrete")
    model = Recording()
    x = torch.randn(*shape)
    out = upsample_guided_model_fn(model, sch, m=m)(x, torch.full((shape[0],), 950.0))
    assert out.shape == x.shape
    assert model.calls[1][0].shape == (shape[0], shape[1], shape[2] // m, shape[3] // m)


def test_block_means_are_replaced_by_the_low_resolution_estimate():
    """D(eps_hat) = eps_low / m exactly when w_t = 1: the guidance overwrites each block mean."""
    sch = build_schedule("sd_discrete")
    model = Recording()
    x = torch.randn(1, 1, 6, 9, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    out = upsample_guided_model_fn(model, sch, m=3)(x, torch.tensor([990.0]))
    x_lo, t_lo = model.calls[1]
    torch.testing.assert_close(torch.nn.functional.avg_pool2d(out, 3), model(x_lo, t_lo) / 3)


def test_snr_matching_and_official_bookkeeping():
    sch = build_schedule("sd_discrete")
    t_net = torch.tensor([700.0, 812.5, 999.0, 1000.0])
    abar, tau = snr_matched_step(t_net, sch, m=2)
    np.testing.assert_allclose(abar.numpy(), ACP[[699, 811, 998, 999]], rtol=1e-12)
    for n, tau_n in zip([700, 812, 999, 1000], (tau * 1000).round().long().tolist(), strict=True):
        assert tau_n == _snr_matched_step_by_hand(n, 2)
    assert (tau <= t_net / 1000).all()
    _, tau_off = snr_matched_step(t_net, sch, m=2, tau_bookkeeping="official")
    # official: the step index n is returned as n / 999, and within about one step of ours
    assert ((tau_off * 999 - (tau_off * 999).round()).abs() < 1e-6).all()
    assert ((tau_off * 1000 - tau * 1000).abs() <= 2.0).all()
    # a tiny t clamps tau to t
    _, tau_small = snr_matched_step(torch.tensor([3.0]), sch, m=3)
    assert float(tau_small) <= 0.003


def test_bad_arguments():
    sch = build_schedule("sd_discrete")
    with pytest.raises(TypeError, match="DiscreteSDSchedule"):
        upsample_guided_model_fn(Recording(), build_schedule("vp_sde"), m=2)
    with pytest.raises(ValueError, match="integer >= 2"):
        upsample_guided_model_fn(Recording(), sch, m=1)
    with pytest.raises(ValueError, match="tau_bookkeeping"):
        upsample_guided_model_fn(Recording(), sch, m=2, tau_bookkeeping="fuzzy")
    with pytest.raises(ValueError, match="divisible by m=2"):
        upsample_guided_model_fn(Recording(), sch, m=2)(torch.zeros(1, 1, 5, 4), torch.tensor([900.0]))


def test_skip_tune_ramp():
    t = torch.tensor([0.0, 0.5, 1.0])
    scales = skip_tune_scales(t, 24)
    assert scales.shape == (3, 24)
    torch.testing.assert_close(scales[0], torch.ones(24))
    torch.testing.assert_close(scales[2], torch.linspace(1.0, 0.82, 24))
    torch.testing.assert_close(scales[1, -1], torch.tensor(0.91))
    assert (scales[:, 0] == 1.0).all() and (scales.diff(dim=1) <= 0).all()
    # the released code's constant t = 0.001 makes it a near no-op
    released = skip_tune_scales(torch.full((2,), 0.001), 24)
    assert float((released - 1).abs().max()) == pytest.approx(0.18e-3, rel=1e-3)
    # general rho_bottom: the top factor is rho_bottom + (rho_top - rho_bottom) t
    torch.testing.assert_close(
        skip_tune_scales(torch.tensor(1.0), 3, rho_top=0.5, rho_bottom=0.9)[0, -1], torch.tensor(0.5)
    )
    assert skip_tune_scales(torch.tensor([0.3]), 1).tolist() == [[1.0]]
    with pytest.raises(ValueError, match="num_receivers"):
        skip_tune_scales(torch.tensor([0.3]), 0)
