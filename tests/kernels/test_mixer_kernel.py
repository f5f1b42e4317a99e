"""The fused Triton mixer (conv + projections + scan + out_proj) against the reference mixer, and its ops.

Also checks that the custom ops are well formed (torch.library.opcheck: schema, fake tensors, autograd) and
that torch.compile traces a whole mixer without a graph break.
"""

from __future__ import annotations

import pytest
import torch
from kernel_cases import DEVICE, rel_err

from dimlab.models.mamba import Mamba


def mixer_grads(mixer, x, backend, grad_out=None):
    mixer.scan_backend = backend
    out = mixer(x)
    if grad_out is None:
        grad_out = torch.randn_like(out)
    grads = torch.autograd.grad(out, [x, *mixer.parameters()], grad_out)
    return out, grads, grad_out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16-autocast"])
def test_mixer_triton_matches_reference(tiny_config, dtype):
    torch.manual_seed(0)
    mixer = Mamba(24, d_state=5, d_conv=3, expand=2).to(DEVICE)
    x = torch.randn(2, 7, 24, device=DEVICE, requires_grad=True)
    ref, ref_grads, g = mixer_grads(mixer, x, "reference")
    with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        out, grads, _ = mixer_grads(mixer, x, "triton", g)
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    assert rel_err(out, ref) < tol
    names = ["x"] + [n for n, _ in mixer.named_parameters()]
    for name, grad, ref_grad in zip(names, grads, ref_grads, strict=True):
        assert grad.dtype == ref_grad.dtype, name
        assert rel_err(grad, ref_grad) < tol, name


def test_mixer_with_d_conv_4_and_biases(tiny_config):
    torch.manual_seed(1)
    mixer = Mamba(16, d_state=16, d_conv=4, expand=2, bias=True).to(DEVICE)
    x = torch.randn(1, 6, 16, device=DEVICE, requires_grad=True)
    ref, ref_grads, g = mixer_grads(mixer, x, "reference")
    out, grads, _ = mixer_grads(mixer, x, "triton", g)
    assert rel_err(out, ref) < 1e-5
    for grad, ref_grad in zip(grads, ref_grads, strict=True):
        assert rel_err(grad, ref_grad) < 1e-5


def test_custom_ops_pass_opcheck(tiny_config):
    torch.manual_seed(2)
    b, length, e, n = 1, 5, 32, 4
    u, dl, z = (torch.randn(b, length, e, device=DEVICE) for _ in range(3))
    bm, cm = (torch.randn(b, length, n, device=DEVICE) for _ in range(2))
    A = -torch.rand(e, n, device=DEVICE) - 0.5
    D, bias = torch.randn(e, device=DEVICE), torch.randn(e, device=DEVICE)
    args = [t.requires_grad_() for t in (u, dl, A, bm, cm, D, z, bias)]
    torch.library.opcheck(torch.ops.dimlab.selective_scan_fwd.default, (*args, True, True))
    _, states = torch.ops.dimlab.selective_scan_fwd(*[a.detach() for a in args], True, True)
    grad = torch.randn(b, length, e, device=DEVICE)
    plain = [a.detach() for a in args]
    torch.library.opcheck(torch.ops.dimlab.selective_scan_bwd.default, (*plain, True, states, grad, True))
    x = torch.randn(b, length, e, device=DEVICE, requires_grad=True)
    w = torch.randn(e, 3, device=DEVICE, requires_grad=True)
    torch.library.opcheck(torch.ops.dimlab.causal_conv1d_fwd.default, (x, w, None, True))
    torch.library.opcheck(
        torch.ops.dimlab.causal_conv1d_bwd.default, (x.detach(), w.detach(), None, True, grad)
    )


def test_fused_mixer_ops_pass_opcheck(tiny_config):
    torch.manual_seed(4)
    mixer = Mamba(16, d_state=4, d_conv=3, expand=2).to(DEVICE)
    xz = mixer.in_proj(torch.randn(1, 5, 16, device=DEVICE)).detach().requires_grad_()
    params = (
        mixer.conv1d.weight[:, 0, :],
        mixer.conv1d.bias,
        mixer.x_proj.weight,
        mixer.dt_proj.weight,
        mixer.out_proj.weight,
        mixer.out_proj.bias,
        -torch.exp(mixer.A_log.float()),
        mixer.D.float(),
        mixer.dt_proj.bias.float(),
    )
    torch.library.opcheck(torch.ops.dimlab.mamba_inner_fwd.default, (xz, *params, True))
    plain = [p.detach() if p is not None else None for p in params]
    _, x_dbl, states = torch.ops.dimlab.mamba_inner_fwd(xz.detach(), *plain, True)
    grad = torch.randn(1, 5, 16, device=DEVICE)
    torch.library.opcheck(
        torch.ops.dimlab.mamba_inner_bwd.default, (xz.detach(), *plain, x_dbl, states, grad)
    )


def test_compile_traces_the_mixer_without_graph_breaks(tiny_config):
    torch.manual_seed(3)
    mixer = Mamba(16, d_state=4, d_conv=3, expand=2, scan_backend="triton").to(DEVICE)
    x = torch.randn(1, 6, 16, device=DEVICE, requires_grad=True)
    compiled = torch.compile(mixer, backend="aot_eager", fullgraph=True)
    out = compiled(x)
    mixer.scan_backend = "reference"
    assert rel_err(out, mixer(x)) < 1e-5
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
