"""Launchers and autograd of the Triton causal depthwise conv1d (+ SiLU), as ``torch.library`` custom ops.

:func:`causal_conv1d` replaces causal-conv1d's ``causal_conv1d_fn`` for Mamba's input side on channel-last
tensors: x (batch, L, E) with any strides, weight (E, K) (any K; DiM uses 3, mamba-ssm's default is 4), bias
(E,) or None. The output is (batch, L, E) contiguous in x's dtype; the arithmetic is fp32.
"""

from __future__ import annotations

import torch
import triton

from dimlab.kernels.conv_kernels import conv_bwd_kernel, conv_fwd_kernel
from dimlab.kernels.scan import SUPPORTED_DTYPES, interpreting, output_view

BLOCK_T = 32  # steps per program: the halo of K - 1 steps costs (K - 1) / BLOCK_T extra loads
BLOCK_E = 256  # channels per program: two per thread of its four warps (4-byte bf16 pairs)
NUM_WARPS = 4


def _grid(batch: int, length: int, dim: int) -> tuple[int, int, int]:
    return batch, triton.cdiv(length, BLOCK_T), triton.cdiv(dim, BLOCK_E)


def check_conv_inputs(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    """Raise a one-line ValueError naming the argument whose shape, dtype or device is unsupported."""
    if x.dim() != 3:
        raise ValueError(
            f"causal_conv1d (triton): x must be (batch, L, channels), got shape {tuple(x.shape)}"
        )
    dim = x.shape[2]
    if weight.dim() != 2 or weight.shape[0] != dim or weight.shape[1] < 1:
        raise ValueError(
            f"causal_conv1d (triton): weight must be (channels={dim}, K), got {tuple(weight.shape)}"
        )
    if bias is not None and tuple(bias.shape) != (dim,):
        raise ValueError(f"causal_conv1d (triton): bias must be ({dim},), got {tuple(bias.shape)}")
    for name, t in (("x", x), ("weight", weight), ("bias", bias)):
        if t is not None and t.dtype not in SUPPORTED_DTYPES:
            raise ValueError(f"causal_conv1d (triton): {name} has unsupported dtype {t.dtype}")
    if x.device.type != "cuda" and not interpreting():
        raise ValueError(
            f"causal_conv1d (triton): x is on {x.device}; the Triton kernels need a CUDA device "
            "(or TRITON_INTERPRET=1 to run them on the CPU for testing)"
        )


@torch.library.custom_op("dimlab::causal_conv1d_fwd", mutates_args=())
def _conv_fwd_op(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, silu: bool
) -> torch.Tensor:
    batch, length, dim = x.shape
    out = torch.empty((batch, length, dim), device=x.device, dtype=x.dtype)
    conv_fwd_kernel[_grid(batch, length, dim)](
        x, weight, bias if bias is not None else weight, out,
        length, dim, *x.stride(), *weight.stride(),
        K=weight.shape[1], BT=BLOCK_T, BE=BLOCK_E, HAS_BIAS=bias is not None, SILU=bool(silu), num_warps=NUM_WARPS,
    )  # fmt: skip
    return out


@_conv_fwd_op.register_fake
def _(x, weight, bias, silu):
    return x.new_empty(tuple(x.shape))


def conv_backward(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    silu: bool,
    grad_out: torch.Tensor,
    dx_out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dx, dweight, dbias)`` of :func:`causal_conv1d` (dbias empty without a bias).

    ``dx_out``: a (batch, L, E) view of x's dtype with contiguous channels (the x half of the mixer's
    (batch, L, 2E) gradient buffer) that dx is written into and returned as.
    """
    batch, length, dim = x.shape
    k = weight.shape[1]
    grid = _grid(batch, length, dim)
    dx = output_view(dx_out, (batch, length, dim), x.dtype, x.device, "causal_conv1d (triton): dx_out")
    dw_part = torch.empty((batch * grid[1], k, dim), device=x.device, dtype=torch.float32)
    db_part = torch.empty((batch * grid[1], dim), device=x.device, dtype=torch.float32)
    conv_bwd_kernel[grid](
        x, weight, bias if bias is not None else weight, grad_out, dx, dw_part, db_part,
        length, dim, *x.stride(), *weight.stride(), *grad_out.stride(), *dx.stride()[:2],
        K=k, BT=BLOCK_T, BE=BLOCK_E, HAS_BIAS=bias is not None, SILU=bool(silu), num_warps=NUM_WARPS,
    )  # fmt: skip
    dw = dw_part.sum(0).t().contiguous().to(weight.dtype)  # contiguous, as the fake implementation promises
    db = db_part.sum(0).to(bias.dtype) if bias is not None else db_part.new_empty((0,))
    return dx, dw, db


@torch.library.custom_op("dimlab::causal_conv1d_bwd", mutates_args=())
def _conv_bwd_op(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, silu: bool, grad_out: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return conv_backward(x, weight, bias, silu, grad_out)


@_conv_bwd_op.register_fake
def _(x, weight, bias, silu, grad_out):
    db = bias.new_empty(tuple(bias.shape)) if bias is not None else x.new_empty((0,), dtype=torch.float32)
    return x.new_empty(tuple(x.shape)), weight.new_empty(tuple(weight.shape)), db


def _setup_context(ctx, inputs, output):
    x, weight, bias, silu = inputs
    ctx.save_for_backward(x, weight, bias)
    ctx.silu = silu


def _backward(ctx, grad_out):
    x, weight, bias = ctx.saved_tensors
    dx, dw, db = _conv_bwd_op(x, weight, bias, ctx.silu, grad_out)
    return dx, dw, db if bias is not None else None, None


torch.library.register_autograd("dimlab::causal_conv1d_fwd", _backward, setup_context=_setup_context)


def causal_conv1d(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, silu: bool = True
) -> torch.Tensor:
    """Causal depthwise conv1d over the time axis of channel-last x, then SiLU unless ``silu=False``."""
    check_conv_inputs(x, weight, bias)
    return _conv_fwd_op(x, weight, bias, bool(silu))
