"""The Triton causal depthwise conv1d (+ SiLU) against F.conv1d in fp64: forward and every gradient."""

from __future__ import annotations

import pytest
import torch
from kernel_cases import DEVICE, rel_err

from dimlab.kernels import causal_conv1d
from dimlab.kernels.reference import causal_conv1d_ref


@pytest.mark.parametrize(
    "length,dim,k,with_bias,silu,dtype",
    [
        (37, 300, 3, True, True, torch.float32),  # L and channels cross the 32-step x 256-channel tiles
        (5, 64, 4, False, True, torch.float32),  # mamba-ssm's default d_conv, no bias
        (33, 40, 3, True, False, torch.float32),  # no activation
        (19, 48, 4, True, True, torch.bfloat16),
        (1, 32, 3, True, True, torch.float32),  # a single step
        (9, 16, 1, True, True, torch.float32),  # one tap: a window of one
        (40, 24, 5, True, True, torch.float32),  # a halo longer than the tile's tail (40 = 32 + 8)
    ],
)
def test_conv_matches_reference(length, dim, k, with_bias, silu, dtype):
    g = torch.Generator().manual_seed(length * dim + k)
    x = torch.randn(2, length, dim, generator=g).to(DEVICE, dtype).requires_grad_()
    w = torch.randn(dim, k, generator=g).to(DEVICE).requires_grad_()
    b = torch.randn(dim, generator=g).to(DEVICE).requires_grad_() if with_bias else None
    out = causal_conv1d(x, w, b, silu=silu)
    ref = causal_conv1d_ref(x, w, b, silu=silu)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    assert out.dtype == dtype and out.shape == x.shape
    assert rel_err(out, ref) < tol
    leaves = [t for t in (x, w, b) if t is not None]
    grad_out = torch.randn_like(ref)
    grads = torch.autograd.grad(out, leaves, grad_out.to(dtype))
    ref_grads = torch.autograd.grad(ref, leaves, grad_out)
    for grad, ref_grad, leaf in zip(grads, ref_grads, leaves, strict=True):
        assert grad.dtype == leaf.dtype
        assert rel_err(grad, ref_grad) < tol


def test_strided_input_is_read_in_place():
    """The x half of an in_proj output (row stride 2E) needs no copy."""
    xz = torch.randn(1, 9, 64, device=DEVICE, requires_grad=True)
    w = torch.randn(32, 3, device=DEVICE)
    out = causal_conv1d(xz[..., :32], w, None)
    ref = causal_conv1d_ref(xz[..., :32], w, None)
    assert rel_err(out, ref) < 1e-5
    (grad,) = torch.autograd.grad(out.sum(), xz)
    (ref_grad,) = torch.autograd.grad(ref.sum(), xz)
    assert rel_err(grad, ref_grad) < 1e-5 and grad[..., 32:].abs().max() == 0


def test_bad_inputs_are_named():
    x = torch.randn(1, 4, 8, device=DEVICE)
    with pytest.raises(ValueError, match=r"weight must be \(channels=8, K\)"):
        causal_conv1d(x, torch.randn(4, 3, device=DEVICE))
    with pytest.raises(ValueError, match=r"bias must be \(8,\)"):
        causal_conv1d(x, torch.randn(8, 3, device=DEVICE), torch.randn(3, device=DEVICE))
    with pytest.raises(ValueError, match="x has unsupported dtype torch.float64"):
        causal_conv1d(x.double(), torch.randn(8, 3, device=DEVICE))


def test_backward_writes_dx_into_a_given_half_buffer():
    """conv_backward(dx_out=...) fills the x half of a (B, L, 2E) buffer, as the mixer's backward uses it."""
    from dimlab.kernels.conv import conv_backward

    x = torch.randn(2, 11, 24, device=DEVICE)
    w, b = torch.randn(24, 3, device=DEVICE), torch.randn(24, device=DEVICE)
    g = torch.randn(2, 11, 24, device=DEVICE)
    buf = torch.zeros(2, 11, 48, device=DEVICE)
    dx, dw, db = conv_backward(x, w, b, True, g, dx_out=buf[..., :24])
    ref_dx, ref_dw, ref_db = conv_backward(x, w, b, True, g)
    assert dx.data_ptr() == buf.data_ptr() and torch.equal(buf[..., :24], ref_dx)
    assert buf[..., 24:].abs().max() == 0 and torch.equal(dw, ref_dw) and torch.equal(db, ref_db)
    with pytest.raises(
        ValueError, match=r"dx_out must be \(2, 11, 24\) torch.float32 with contiguous channels"
    ):
        conv_backward(x, w, b, True, g, dx_out=buf[..., ::2])
