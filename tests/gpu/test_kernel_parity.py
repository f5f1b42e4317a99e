"""CUDA kernels (mamba-ssm / causal-conv1d) against the pure-PyTorch scan, on DiM's shapes.

Needs a GPU and the kernels (`make kernels`); skipped cleanly otherwise.
"""

from __future__ import annotations

import pytest
import torch
from gpu_numerics import rel_err

from dimlab.models.mamba import Mamba, set_scan_backend
from dimlab.models.scan import selective_scan

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.cuda_kernels,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

D_MODELS = [512, 1024, 1536]  # DiM-S / L / H
LENGTHS = [366, 1230]  # 256px and 512px token sequences (docs/backbone.md)
FP32_TOL = 1e-4
BF16_TOL = 1e-2


def scan_inputs(batch, dim, n, length, dtype):
    """Random scan inputs shaped like a Mamba mixer's (A from the S4D init, dt bias of a fresh dt_proj)."""
    dev = "cuda"
    inputs = {
        "u": torch.randn(batch, dim, length, device=dev, dtype=dtype),
        "delta": (torch.randn(batch, dim, length, device=dev) * 0.5).to(dtype),
        "A": -torch.arange(1, n + 1, device=dev, dtype=torch.float32).repeat(dim, 1)
        * torch.exp(torch.randn(dim, 1, device=dev) * 0.3),
        "B": torch.randn(batch, n, length, device=dev, dtype=dtype),
        "C": torch.randn(batch, n, length, device=dev, dtype=dtype),
        "D": torch.randn(dim, device=dev),
        "z": torch.randn(batch, dim, length, device=dev, dtype=dtype),
        "delta_bias": torch.log(torch.expm1(torch.empty(dim, device=dev).uniform_(1e-3, 0.1))),
    }
    return {k: v.requires_grad_() for k, v in inputs.items()}


@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("d_model", D_MODELS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_selective_scan_cuda_matches_torch(d_model, length, dtype):
    inputs = scan_inputs(2, 2 * d_model, 16, length, dtype)
    grad_out = torch.randn_like(inputs["u"])
    results = {}
    for backend in ("cuda", "torch"):
        out = selective_scan(**inputs, delta_softplus=True, backend=backend)
        grads = torch.autograd.grad(out, list(inputs.values()), grad_out)
        results[backend] = (out, dict(zip(inputs, grads, strict=True)))
    tol = FP32_TOL if dtype == torch.float32 else BF16_TOL
    (out_cuda, grads_cuda), (out_torch, grads_torch) = results["cuda"], results["torch"]
    assert out_cuda.dtype == out_torch.dtype == dtype
    assert rel_err(out_torch, out_cuda) < tol
    for name in inputs:
        # fp32 gradient sums over (batch, L) differ in summation order only
        assert rel_err(grads_torch[name], grads_cuda[name]) < (tol if dtype == torch.float32 else 3 * tol), (
            name
        )


@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("d_model", D_MODELS)
@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
def test_mixer_cuda_matches_torch(d_model, length, autocast):
    torch.manual_seed(d_model + length)
    mixer = Mamba(d_model, d_state=16, d_conv=3, expand=2, device="cuda")
    x = torch.randn(2, length, d_model, device="cuda", requires_grad=True)
    grad_out = torch.randn(2, length, d_model, device="cuda")
    results = {}
    for backend in ("cuda", "torch"):
        set_scan_backend(mixer, backend)
        mixer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            y = mixer(x)
        (gx,) = torch.autograd.grad(y, x, grad_out, retain_graph=True)
        y.backward(grad_out)
        results[backend] = (y.detach(), {"x": gx, **{k: p.grad for k, p in mixer.named_parameters()}})
    tol = BF16_TOL if autocast else FP32_TOL
    (y_cuda, g_cuda), (y_torch, g_torch) = results["cuda"], results["torch"]
    assert y_cuda.dtype == y_torch.dtype == (torch.bfloat16 if autocast else torch.float32)
    assert rel_err(y_torch, y_cuda) < tol
    for name in g_cuda:
        assert rel_err(g_torch[name], g_cuda[name]) < (3 * tol if autocast else tol), name


def test_same_init_and_outputs_as_mamba_ssm():
    """Seeded construction gives mamba-ssm's exact parameters, and its forward agrees with ours."""
    from mamba_ssm.modules.mamba_simple import Mamba as UpstreamMamba

    torch.manual_seed(7)
    ours = Mamba(256, d_state=16, d_conv=3, expand=2)
    torch.manual_seed(7)
    theirs = UpstreamMamba(256, d_state=16, d_conv=3, expand=2)
    ours_sd, theirs_sd = ours.state_dict(), theirs.state_dict()
    assert list(ours_sd) == list(theirs_sd)
    for name in ours_sd:
        assert torch.equal(ours_sd[name], theirs_sd[name]), name
    ours.cuda()
    theirs.cuda()
    theirs.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(2, 366, 256, device="cuda")
    for backend in ("cuda", "torch"):
        set_scan_backend(ours, backend)
        assert rel_err(ours(x), theirs(x)) < FP32_TOL, backend


def test_auto_picks_triton_on_gpu():
    """With Triton importable, auto prefers dimlab's own kernels over mamba-ssm's."""
    mixer = Mamba(64, d_conv=3, device="cuda")
    x = torch.randn(1, 17, 64, device="cuda")
    y_auto = mixer(x)
    set_scan_backend(mixer, "triton")
    assert torch.equal(y_auto, mixer(x))
