"""Classifier-free guidance: the U-ViT formula, one batched forward, and the conditional limit on a mixture."""

from __future__ import annotations

import pytest
import torch

from dimlab.diffusion.guidance import cfg_model_fn, cfg_scale_to_weight, cfg_weight_to_scale
from dimlab.diffusion.samplers import sample
from dimlab.diffusion.schedules import build_schedule


class ToyModel:
    """eps = x * (1 + y) + t / 1000, recording every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = []

    def __call__(self, x, t_net, y):
        self.calls.append((x, t_net, y))
        return x * (1 + y.view(-1, 1, 1, 1).float()) + t_net.view(-1, 1, 1, 1) / 1000


def test_formula_and_single_batched_forward():
    model = ToyModel()
    x = torch.randn(3, 2, 4, 4)
    y = torch.tensor([0, 4, 7])
    t = torch.tensor([10.0, 500.0, 999.0])
    out = cfg_model_fn(model, y, null_class=10, cfg_scale=0.4)(x, t)
    assert len(model.calls) == 1
    xs, ts, ys = model.calls[0]
    assert (
        xs.shape[0] == 6
        and torch.equal(ys, torch.tensor([0, 4, 7, 10, 10, 10]))
        and torch.equal(ts, t.repeat(2))
    )
    eps_c = x * (1 + y.view(-1, 1, 1, 1)) + t.view(-1, 1, 1, 1) / 1000
    eps_u = x * 11 + t.view(-1, 1, 1, 1) / 1000
    torch.testing.assert_close(out, eps_c + 0.4 * (eps_c - eps_u))
    # the same thing in the w = 1 + s convention
    w = cfg_scale_to_weight(0.4)
    torch.testing.assert_close(out, eps_u + w * (eps_c - eps_u))
    assert cfg_weight_to_scale(1.7) == pytest.approx(0.7)


def test_scale_zero_is_one_conditional_forward_and_scalar_time_broadcasts():
    model = ToyModel()
    x = torch.randn(2, 1, 2, 2)
    y = torch.tensor([1, 2])
    out = cfg_model_fn(model, y, null_class=10, cfg_scale=0.0)(x, torch.tensor(5.0))
    assert len(model.calls) == 1 and model.calls[0][0].shape[0] == 2
    assert torch.equal(model.calls[0][1], torch.tensor([5.0, 5.0]))
    torch.testing.assert_close(out, x * (1 + y.view(-1, 1, 1, 1)) + 0.005)


def test_bad_arguments():
    with pytest.raises(ValueError, match="needs class labels"):
        cfg_model_fn(ToyModel(), None, 10, 1.0)
    with pytest.raises(ValueError, match=">= 0"):
        cfg_model_fn(ToyModel(), torch.tensor([0]), 10, -0.5)
    with pytest.raises(ValueError, match="labels for a batch"):
        cfg_model_fn(ToyModel(), torch.tensor([0]), 10, 1.0)(torch.zeros(2, 1), torch.zeros(2))


def test_unguided_sampling_reaches_the_class_conditional_means(mixture_oracle):
    sch = build_schedule("sd_discrete")
    oracle = mixture_oracle(sch, mu=1.5, s=0.5)
    n = 4000
    y = torch.tensor([0, 1]).repeat_interleave(n)
    # start from each class's exact marginal at T; together they are a sample of the null (mixture) marginal
    alpha_t, sigma_t = sch.alpha_sigma(torch.ones(1, dtype=torch.float64))
    z = torch.randn(2 * n, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    noise = alpha_t * 1.5 * (2 * y.view(-1, 1) - 1) + torch.sqrt(alpha_t**2 * 0.25 + sigma_t**2) * z
    out = sample(
        cfg_model_fn(oracle, y, oracle.null_class, 0.0), sch, noise, sampler="dpm++", skip_type="logSNR"
    )
    means = [float(out[:n].mean()), float(out[n:].mean())]
    assert means[0] == pytest.approx(-1.5, abs=0.04) and means[1] == pytest.approx(1.5, abs=0.04)
    # the null class alone samples the two-mode mixture
    null = torch.full((2 * n,), oracle.null_class)
    out = sample(
        cfg_model_fn(oracle, null, oracle.null_class, 0.0), sch, noise, sampler="dpm++", skip_type="logSNR"
    )
    frac_pos = float((out > 0).double().mean())
    assert frac_pos == pytest.approx(0.5, abs=0.05)
    assert float(out.abs().mean()) == pytest.approx(1.5, abs=0.04)
    # guidance pushes samples further from the other class
    guided = sample(
        cfg_model_fn(oracle, y, oracle.null_class, 1.0), sch, noise, sampler="dpm++", skip_type="logSNR"
    )
    assert float(guided[n:].mean()) > means[1] and float(guided[:n].mean()) < means[0]
