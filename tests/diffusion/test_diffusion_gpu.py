"""The diffusion maths on a CUDA device: schedules, loss and every sampler with a CPU generator."""

from __future__ import annotations

import pytest
import torch

from dimlab.diffusion.loss import epsilon_loss
from dimlab.diffusion.samplers import SAMPLERS, sample
from dimlab.diffusion.schedules import build_schedule
from dimlab.diffusion.upsample import upsample_guided_model_fn

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _toy(x, t_net):
    return 0.1 * x + 1e-4 * t_net.view(-1, *([1] * (x.dim() - 1)))


@pytest.mark.parametrize("name", ["sd_discrete", "vp_sde"])
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_sampling_on_cuda_matches_cpu(name, sampler):
    sch = build_schedule(name)
    noise = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    steps = 20 if sampler.startswith("dpm") else 50
    outs = []
    for device in ("cpu", "cuda"):
        g = torch.Generator().manual_seed(1)  # CPU generator drives the GPU run too
        outs.append(sample(_toy, sch, noise.to(device), sampler=sampler, steps=steps, generator=g).cpu())
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["sd_discrete", "vp_sde"])
def test_schedule_and_loss_on_cuda(name):
    sch = build_schedule(name)
    t = torch.linspace(sch.eps, 1.0, 101, dtype=torch.float64, device="cuda")
    torch.testing.assert_close(sch.inverse_lambda(sch.marginal_lambda(t)), t, rtol=1e-9, atol=1e-12)
    x0 = torch.randn(8, 4, 8, 8, device="cuda", dtype=torch.bfloat16)
    gpu = epsilon_loss(
        lambda x, tn, y: x, sch, x0, generator=torch.Generator().manual_seed(0), bf16_timesteps=True
    )
    cpu = epsilon_loss(
        lambda x, tn, y: x, sch, x0.cpu(), generator=torch.Generator().manual_seed(0), bf16_timesteps=True
    )
    assert gpu.shape == (8,) and gpu.dtype == torch.float32
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=2e-2, atol=2e-2)


def test_upsample_guidance_on_cuda():
    sch = build_schedule("sd_discrete")
    x = torch.randn(2, 4, 12, 8)
    fn = upsample_guided_model_fn(_toy, sch, m=2)
    t = torch.tensor([900.0, 900.0])
    torch.testing.assert_close(fn(x.cuda(), t.cuda()).cpu(), fn(x, t), rtol=1e-5, atol=1e-5)
