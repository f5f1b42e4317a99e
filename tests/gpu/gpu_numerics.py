"""What the GPU parity tests share: the error measure and DiM-S/2's forward + backward on fixed inputs."""

from __future__ import annotations

import torch

from dimlab.models.mamba import set_scan_backend


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative 2-norm error of a against b, in fp64."""
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def forward_backward(model, backend: str, autocast: bool):
    """Output and all parameter gradients of one forward/backward of DiM-S/2 with scan ``backend``."""
    set_scan_backend(model, backend)
    model.zero_grad(set_to_none=True)
    g = torch.Generator(device="cuda").manual_seed(1)
    x = torch.randn(4, 3, 32, 32, device="cuda", generator=g)
    t = torch.rand(4, device="cuda", generator=g) * 999
    grad_out = torch.randn(4, 3, 32, 32, device="cuda", generator=g)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        out = model(x, t)
    out.float().backward(grad_out)
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.detach().float(), grads
