"""Selective-scan backends: the chunked torch scan against the sequential reference, and backend choice."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F

from dimlab.models import scan
from dimlab.models.scan import (
    resolve_backend,
    selective_scan,
    selective_scan_reference,
    selective_scan_torch,
)

INPUT_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def make_inputs(batch, dim, n, length, dtype=torch.float64, with_d=True, with_z=True, with_bias=True):
    """Fresh random scan inputs (mamba-ssm layout), every one requiring grad; absent ones are None."""
    inputs = {
        "u": torch.randn(batch, dim, length, dtype=dtype),
        "delta": torch.randn(batch, dim, length, dtype=dtype) * 0.5,
        # negative real A spread like the S4D init after training: from -0.5 to -20
        "A": -torch.exp(torch.empty(dim, n, dtype=dtype).uniform_(-0.7, 3.0)),
        "B": torch.randn(batch, n, length, dtype=dtype),
        "C": torch.randn(batch, n, length, dtype=dtype),
        "D": torch.randn(dim, dtype=dtype) if with_d else None,
        "z": torch.randn(batch, dim, length, dtype=dtype) if with_z else None,
        "delta_bias": torch.randn(dim, dtype=dtype) * 0.5 if with_bias else None,
    }
    return {k: (v.requires_grad_() if v is not None else None) for k, v in inputs.items()}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative error of a against b in the 2-norm (0 when both are exactly zero)."""
    scale = b.norm().item()
    diff = (a - b).norm().item()
    return diff / scale if scale > 0 else diff


def run_and_grad(fn, inputs, grad_out=None, **kwargs):
    """Output and gradients w.r.t. every present input, for a fixed upstream gradient."""
    out = fn(**inputs, **kwargs)
    if grad_out is None:
        grad_out = torch.randn_like(out)
    present = [k for k in INPUT_NAMES if inputs[k] is not None]
    grads = torch.autograd.grad(out, [inputs[k] for k in present], grad_out)
    return out, dict(zip(present, grads, strict=True)), grad_out


@pytest.mark.parametrize("length", [1, 2, 7, 31, 127, 130])
@pytest.mark.parametrize("softplus", [True, False])
def test_torch_scan_matches_reference_forward_and_backward(length, softplus):
    inputs = make_inputs(2, 6, 4, length)
    if not softplus:  # without softplus, delta + delta_bias must stay positive to be a step size
        for name in ("delta", "delta_bias"):
            inputs[name] = inputs[name].detach().abs().requires_grad_()
    ref, ref_grads, g = run_and_grad(selective_scan_reference, inputs, delta_softplus=softplus)
    out, grads, _ = run_and_grad(selective_scan_torch, inputs, g, delta_softplus=softplus)
    assert out.dtype == inputs["u"].dtype
    assert rel_err(out, ref) < 1e-10
    for name, ref_grad in ref_grads.items():
        assert torch.allclose(grads[name], ref_grad, rtol=1e-9, atol=1e-12), name


@pytest.mark.parametrize(
    "with_d,with_z,with_bias",
    [
        (False, False, False),
        (True, False, False),
        (False, True, False),
        (False, False, True),
        (True, True, True),
    ],
)
def test_optional_inputs(with_d, with_z, with_bias):
    inputs = make_inputs(1, 5, 3, 19, with_d=with_d, with_z=with_z, with_bias=with_bias)
    ref, ref_grads, g = run_and_grad(selective_scan_reference, inputs, delta_softplus=True)
    out, grads, _ = run_and_grad(selective_scan_torch, inputs, g, delta_softplus=True)
    assert rel_err(out, ref) < 1e-10
    assert set(grads) == set(ref_grads)
    for name in ref_grads:
        assert rel_err(grads[name], ref_grads[name]) < 1e-9, name


@pytest.mark.parametrize("chunk_size", [1, 3, 8, 64])
def test_chunk_sizes_including_non_divisors(chunk_size):
    inputs = make_inputs(2, 4, 5, 37)
    ref, ref_grads, g = run_and_grad(selective_scan_reference, inputs, delta_softplus=True)
    out, grads, _ = run_and_grad(selective_scan_torch, inputs, g, delta_softplus=True, chunk_size=chunk_size)
    assert rel_err(out, ref) < 1e-10
    for name in ref_grads:
        assert rel_err(grads[name], ref_grads[name]) < 1e-9, name


def test_float32_relative_error():
    inputs = make_inputs(2, 16, 8, 101, dtype=torch.float32)
    ref, ref_grads, g = run_and_grad(selective_scan_reference, inputs, delta_softplus=True)
    out, grads, _ = run_and_grad(selective_scan_torch, inputs, g, delta_softplus=True)
    assert out.dtype == torch.float32
    assert rel_err(out, ref) < 1e-5
    for name in ref_grads:
        assert grads[name].dtype == torch.float32
        assert rel_err(grads[name], ref_grads[name]) < 1e-5, name


def test_gradcheck_small():
    inputs = make_inputs(1, 3, 2, 6)
    args = tuple(inputs[k] for k in INPUT_NAMES)

    def fn(*xs):
        return selective_scan_torch(*xs, delta_softplus=True, chunk_size=4)

    assert torch.autograd.gradcheck(fn, args)


def test_reference_matches_equations_written_out():
    """The oracle itself against the recurrence, one channel and one state at a time."""
    inputs = {k: (v.detach() if v is not None else None) for k, v in make_inputs(1, 2, 2, 4).items()}
    out = selective_scan_reference(**inputs, delta_softplus=True)
    u, delta, A, B, C = (
        inputs[k][0] if inputs[k].dim() == 3 else inputs[k] for k in ("u", "delta", "A", "B", "C")
    )
    D, z, bias = inputs["D"], inputs["z"][0], inputs["delta_bias"]
    for d in range(2):
        h = [0.0, 0.0]
        for t in range(4):
            dt = F.softplus(delta[d, t] + bias[d])
            y = 0.0
            for n in range(2):
                h[n] = torch.exp(dt * A[d, n]) * h[n] + dt * B[n, t] * u[d, t]
                y = y + C[n, t] * h[n]
            expected = (y + D[d] * u[d, t]) * F.silu(z[d, t])
            assert torch.allclose(out[0, d, t], expected, rtol=1e-12)


def test_stable_with_very_strong_decay():
    """dt*A of -1e4 per step must not overflow anything (a log-space cumsum would)."""
    inputs = make_inputs(1, 4, 3, 50, dtype=torch.float32)
    with torch.no_grad():
        inputs["A"].mul_(500.0)
    ref, ref_grads, g = run_and_grad(selective_scan_reference, inputs, delta_softplus=True)
    out, grads, _ = run_and_grad(selective_scan_torch, inputs, g, delta_softplus=True)
    assert torch.isfinite(out).all()
    assert rel_err(out, ref) < 1e-5
    for name in ref_grads:
        assert torch.isfinite(grads[name]).all(), name
        assert torch.allclose(grads[name], ref_grads[name], rtol=1e-4, atol=1e-5), name


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs_computed_in_fp32(dtype):
    inputs = {
        k: (v.detach().to(dtype) if v is not None else None) for k, v in make_inputs(2, 8, 4, 33).items()
    }
    out = selective_scan_torch(**inputs, delta_softplus=True)
    assert out.dtype == dtype
    ref = selective_scan_reference(
        **{k: (v.double() if v is not None else None) for k, v in inputs.items()}, delta_softplus=True
    )
    assert rel_err(out.double(), ref) < 1e-2


def test_autocast_bf16_on_cpu_keeps_fp32_inside():
    """Under autocast the torch scan still computes in fp32 (equal to the fp32 reference outside it)."""
    inputs = make_inputs(2, 8, 4, 33, dtype=torch.float32)
    ref, ref_grads, g = run_and_grad(selective_scan_reference, inputs, delta_softplus=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, grads, _ = run_and_grad(selective_scan_torch, inputs, g, delta_softplus=True)
    assert out.dtype == torch.float32
    assert rel_err(out, ref) < 1e-5
    for name in ref_grads:
        assert rel_err(grads[name], ref_grads[name]) < 1e-5, name


def test_dispatch_and_shape_errors():
    inputs = {k: (v.detach() if v is not None else None) for k, v in make_inputs(1, 4, 2, 9).items()}
    by_reference = selective_scan(**inputs, delta_softplus=True, backend="reference")
    by_torch = selective_scan(**inputs, delta_softplus=True, backend="torch")
    by_auto = selective_scan(**inputs, delta_softplus=True, backend="auto")
    assert rel_err(by_torch, by_reference) < 1e-10
    assert torch.equal(by_auto, by_torch)
    bad = dict(inputs, B=inputs["B"][:, :1])
    with pytest.raises(ValueError, match="B must have shape"):
        selective_scan(**bad)
    with pytest.raises(ValueError, match="unknown scan backend 'mamba2'"):
        selective_scan(**inputs, backend="mamba2")


def test_resolve_backend_on_cpu(caplog, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    scan._logged_choices.clear()
    with caplog.at_level(logging.INFO, logger="dimlab"):
        assert resolve_backend("auto", "cpu") == "torch"
        assert resolve_backend("auto", torch.device("cpu")) == "torch"
    assert sum("backend 'auto' -> 'torch'" in r.getMessage() for r in caplog.records) == 1
    assert resolve_backend("torch", "cpu") == "torch"
    assert resolve_backend("reference", "cpu") == "reference"
    with pytest.raises(RuntimeError, match="needs tensors on a CUDA device"):
        resolve_backend("cuda", "cpu")
    if scan.triton_available():
        with pytest.raises(RuntimeError, match="'triton' needs tensors on a CUDA device"):
            resolve_backend("triton", "cpu")
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        assert resolve_backend("triton", "cpu") == "triton"


@pytest.mark.skipif(scan.kernels_available(), reason="the kernels are installed here")
def test_cuda_backend_without_kernels_says_how_to_install():
    with pytest.raises(RuntimeError, match="make kernels"):
        resolve_backend("cuda", "cuda")
    # auto prefers dimlab's Triton kernels on a GPU, and needs neither of the two to run
    assert resolve_backend("auto", "cuda") == ("triton" if scan.triton_available() else "torch")
