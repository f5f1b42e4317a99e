"""epsilon_loss: per-sample MSE, noise level and network-time conventions, the bf16 timestep option."""

from __future__ import annotations

import pytest
import torch

from dimlab.diffusion.loss import epsilon_loss
from dimlab.diffusion.schedules import build_schedule


class Recorder:
    """model_fn that records its inputs and predicts ``scale * x_t``."""

    def __init__(self, scale: float = 0.5) -> None:
        self.scale = scale
        self.inputs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = []

    def __call__(self, x_t, t_net, y):
        self.inputs.append((x_t.clone(), t_net.clone(), y))
        return self.scale * x_t


def _replay(schedule, x0, seed):
    """The draws epsilon_loss makes from a generator seeded with ``seed``: time first, then noise."""
    g = torch.Generator().manual_seed(seed)
    t = schedule.sample_training_time(x0.shape[0], x0.device, generator=g)
    noise = torch.randn(x0.shape, generator=g, dtype=x0.dtype)
    return t, noise


@pytest.mark.parametrize("name", ["sd_discrete", "vp_sde"])
def test_loss_is_per_sample_mse_on_the_forward_process(name):
    sch = build_schedule(name)
    x0 = torch.randn(6, 3, 4, 5, generator=torch.Generator().manual_seed(1))
    y = torch.arange(6)
    model = Recorder()
    loss = epsilon_loss(model, sch, x0, y, generator=torch.Generator().manual_seed(7))
    t, noise = _replay(sch, x0, 7)
    alpha, sigma = sch.alpha_sigma(t)
    x_t = alpha.view(-1, 1, 1, 1) * x0 + sigma.view(-1, 1, 1, 1) * noise
    (seen_x, seen_t, seen_y) = model.inputs[0]
    torch.testing.assert_close(seen_x, x_t)
    assert seen_y is y
    assert seen_t.dtype == torch.float32
    torch.testing.assert_close(seen_t, sch.network_time(t))
    expected = ((0.5 * x_t - noise) ** 2).mean(dim=(1, 2, 3))
    assert loss.shape == (6,)
    torch.testing.assert_close(loss, expected)


def test_network_time_convention_values():
    x0 = torch.zeros(4096, 1)
    model = Recorder()
    epsilon_loss(model, build_schedule("sd_discrete"), x0, generator=torch.Generator().manual_seed(0))
    t_net = model.inputs[0][1]
    assert torch.equal(t_net, t_net.round()) and float(t_net.min()) >= 1 and float(t_net.max()) <= 1000
    model = Recorder()
    epsilon_loss(model, build_schedule("vp_sde"), x0, generator=torch.Generator().manual_seed(0))
    t_net = model.inputs[0][1]
    assert float(t_net.min()) >= 0 and float(t_net.max()) < 999 and not torch.equal(t_net, t_net.round())


def test_bf16_timesteps_round_only_what_the_network_sees():
    sch = build_schedule("sd_discrete")
    x0 = torch.randn(4096, 2, generator=torch.Generator().manual_seed(3))
    exact, rounded = Recorder(), Recorder()
    epsilon_loss(exact, sch, x0, generator=torch.Generator().manual_seed(5))
    epsilon_loss(rounded, sch, x0, generator=torch.Generator().manual_seed(5), bf16_timesteps=True)
    x_exact, t_exact, _ = exact.inputs[0]
    x_round, t_round, _ = rounded.inputs[0]
    torch.testing.assert_close(x_round, x_exact)  # the noise level still uses the exact step
    assert torch.equal(t_round, t_exact.to(torch.bfloat16).float())
    assert not torch.equal(t_round, t_exact)
    assert float((t_round - t_exact).abs().max()) <= 2.0
    assert len(torch.unique(t_round)) <= 506 < len(torch.unique(t_exact))


def test_reproducible_and_rejects_bad_model_output():
    sch = build_schedule("vp_sde")
    x0 = torch.randn(3, 2, 4, 4)
    a = epsilon_loss(Recorder(), sch, x0, generator=torch.Generator().manual_seed(2))
    b = epsilon_loss(Recorder(), sch, x0, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="expected"):
        epsilon_loss(lambda x, t, y: x[:, :1], sch, x0)
