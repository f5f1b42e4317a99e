"""The scan kernels' softplus and sigmoid (:func:`_softplus_sigmoid`, :func:`_sigmoid`) against fp64 torch.

Elementwise relative errors over the whole range the kernels see: Mamba's dt region (softplus of -7 .. -2, where
the series branch runs), both sides of its switch at exp(x) = 1/4, the threshold 20 and far beyond. FAST 1 (the
approximate GPU instructions) runs only compiled on a GPU; the interpreter runs the accurate functions.
"""

from __future__ import annotations

import math

import pytest
import torch
import triton
import triton.language as tl
from kernel_cases import DEVICE

from dimlab.kernels import scan_kernels


@triton.jit
def _math_kernel(x_ptr, sp_ptr, sg_ptr, sz_ptr, n, FAST: tl.constexpr, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = i < n
    x = tl.load(x_ptr + i, mask=mask, other=0.0)
    sp, sg = scan_kernels._softplus_sigmoid(x, FAST)
    tl.store(sp_ptr + i, sp, mask=mask)
    tl.store(sg_ptr + i, sg, mask=mask)
    tl.store(sz_ptr + i, scan_kernels._sigmoid(x, FAST), mask=mask)


def _points() -> torch.Tensor:
    log_quarter = math.log(0.25)
    pieces = [
        torch.linspace(-100.0, 40.0, 701),
        torch.linspace(-7.0, -2.0, 101),  # Mamba's dt range (softplus 1e-3 .. 0.13)
        torch.linspace(log_quarter - 1e-3, log_quarter + 1e-3, 21),  # the series / logarithm switch
        torch.tensor([19.999, 20.0, 20.001, 88.0, -87.0, 0.0]),
    ]
    return torch.cat(pieces).float()


@pytest.mark.parametrize("fast", [0, 1])
def test_softplus_and_sigmoid_match_fp64(fast):
    if fast and DEVICE != "cuda":
        pytest.skip("the approximate instructions run only compiled on a GPU")
    x = _points().to(DEVICE)
    outs = [torch.empty_like(x) for _ in range(3)]
    block = 128
    _math_kernel[(triton.cdiv(x.numel(), block),)](x, *outs, x.numel(), FAST=fast, BLOCK=block)
    xd = x.double().cpu()
    softplus = torch.where(xd <= 20.0, torch.log1p(torch.exp(xd)), xd)  # mamba-ssm's threshold
    sigmoid_dt = torch.where(xd <= 20.0, torch.sigmoid(xd), torch.ones_like(xd))
    expected = (softplus, sigmoid_dt, torch.sigmoid(xd))
    # an absolute floor: near fp32's smallest normal (1.2e-38) values flush to zero (.ftz on a GPU)
    tiny = 1e-30
    for name, got, want in zip(("softplus", "sigmoid of dt", "sigmoid"), outs, expected, strict=True):
        got = got.double().cpu()
        rel = (got - want).abs() / want.abs().clamp_min(tiny)
        # exp(x) as exp2(x log2 e) in fp32: the product's rounding makes the error grow as |x| * eps
        worst = (rel / xd.abs().clamp_min(1.0)).max().item()
        assert worst < (1.5e-6 if fast else 5e-7), f"{name}: relative error / max(1, |x|) up to {worst:.3g}"
