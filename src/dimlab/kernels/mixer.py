"""The Mamba mixer's inner part as one custom op on the Triton kernels: conv -> projections -> scan -> out_proj.

:func:`mamba_inner` is mamba-ssm's ``mamba_inner_fn`` for channel-last tokens: it takes ``xz = in_proj(x)``
(batch, L, 2E) and returns the mixer output (batch, L, d_model). Like mamba-ssm's fused path it keeps only
``xz``, the small ``x_proj`` output and the scan's chunk states for the backward, and recomputes the conv output,
dt and the scan output there (mamba-ssm's ``checkpoint_lvl=1``); with the (B, L, E) tensors of the unfused
composition that would be about 5 E bf16 values per token kept instead of 2 E + (R + 2N).

The matrix products run in ``xz``'s dtype (under autocast that is the autocast dtype), the scan in fp32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dimlab.kernels.conv import _conv_fwd_op, check_conv_inputs, conv_backward
from dimlab.kernels.scan import check_scan_inputs, get_scan_config, scan_backward, scan_forward


def _split(xz: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    return xz[..., :dim], xz[..., dim:]


def _projections(x_conv, x_proj_w, dt_proj_w, dt_rank: int, d_state: int):
    dtype = x_conv.dtype
    x_dbl = F.linear(x_conv, x_proj_w.to(dtype))
    dt = F.linear(x_dbl[..., :dt_rank], dt_proj_w.to(dtype))
    return x_dbl, dt


@torch.library.custom_op("dimlab::mamba_inner_fwd", mutates_args=())
def _mamba_inner_fwd_op(
    xz: torch.Tensor,
    conv_w: torch.Tensor,
    conv_b: torch.Tensor | None,
    x_proj_w: torch.Tensor,
    dt_proj_w: torch.Tensor,
    out_proj_w: torch.Tensor,
    out_proj_b: torch.Tensor | None,
    A: torch.Tensor,
    D: torch.Tensor,
    dt_bias: torch.Tensor,
    save: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    dim = A.shape[0]
    d_state = A.shape[1]
    dt_rank = dt_proj_w.shape[1]
    x, z = _split(xz, dim)
    x_conv = _conv_fwd_op(x, conv_w, conv_b, True)
    x_dbl, dt = _projections(x_conv, x_proj_w, dt_proj_w, dt_rank, d_state)
    bm = x_dbl[..., dt_rank : dt_rank + d_state]
    cm = x_dbl[..., dt_rank + d_state :]
    y, states = scan_forward(x_conv, dt, A, bm, cm, D, z, dt_bias, True, save)
    dtype = xz.dtype
    out = F.linear(y, out_proj_w.to(dtype), out_proj_b.to(dtype) if out_proj_b is not None else None)
    return out, x_dbl, states


@_mamba_inner_fwd_op.register_fake
def _(xz, conv_w, conv_b, x_proj_w, dt_proj_w, out_proj_w, out_proj_b, A, D, dt_bias, save):
    batch, length, _ = xz.shape
    dim, n = A.shape
    out = xz.new_empty((batch, length, out_proj_w.shape[0]))
    x_dbl = xz.new_empty((batch, length, x_proj_w.shape[0]))
    chunks = -(-length // get_scan_config().t_save)
    states = xz.new_empty((batch, chunks, n, dim) if save else (0,), dtype=torch.float32)
    return out, x_dbl, states


@torch.library.custom_op("dimlab::mamba_inner_bwd", mutates_args=())
def _mamba_inner_bwd_op(
    xz: torch.Tensor,
    conv_w: torch.Tensor,
    conv_b: torch.Tensor | None,
    x_proj_w: torch.Tensor,
    dt_proj_w: torch.Tensor,
    out_proj_w: torch.Tensor,
    out_proj_b: torch.Tensor | None,
    A: torch.Tensor,
    D: torch.Tensor,
    dt_bias: torch.Tensor,
    x_dbl: torch.Tensor,
    states: torch.Tensor,
    grad_out: torch.Tensor,
) -> tuple[
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
]:
    dim, d_state = A.shape
    dt_rank = dt_proj_w.shape[1]
    dtype = xz.dtype
    x, z = _split(xz, dim)
    x_conv = _conv_fwd_op(x, conv_w, conv_b, True)
    dt = F.linear(x_dbl[..., :dt_rank], dt_proj_w.to(dtype))
    bm = x_dbl[..., dt_rank : dt_rank + d_state]
    cm = x_dbl[..., dt_rank + d_state :]
    grad_out = grad_out.to(dtype)
    dy = grad_out @ out_proj_w.to(dtype)
    # the scan and conv kernels write the two halves of xz's gradient in place (no concatenation)
    dxz = torch.empty_like(xz, memory_format=torch.contiguous_format)
    # ddt overwrites dt and y overwrites dy (neither is needed after the scan): two (B, L, E) buffers fewer at
    # the backward's memory peak, which decides the largest batch under activation checkpointing
    du, ddt, dA, dB, dC, dD, _dz, dbias, y = scan_backward(
        x_conv,
        dt,
        A,
        bm,
        cm,
        D,
        z,
        dt_bias,
        True,
        states,
        dy,
        True,
        dz_out=dxz[..., dim:],
        overwrite_inputs=True,
    )
    del dt, dy
    flat = grad_out.reshape(-1, grad_out.shape[-1])
    d_out_w = (flat.t() @ y.reshape(-1, dim)).to(out_proj_w.dtype)
    d_out_b = (
        flat.sum(0, dtype=torch.float32).to(out_proj_b.dtype) if out_proj_b is not None else flat.new_empty(0)
    )
    ddt_flat = ddt.reshape(-1, dim)
    d_dt_w = (ddt_flat.t() @ x_dbl[..., :dt_rank].reshape(-1, dt_rank)).to(dt_proj_w.dtype)
    d_xdbl = torch.cat([ddt @ dt_proj_w.to(dtype), dB, dC], dim=-1)
    d_xproj_w = (d_xdbl.reshape(-1, d_xdbl.shape[-1]).t() @ x_conv.reshape(-1, dim)).to(x_proj_w.dtype)
    du_flat = du.view(-1, dim)
    du_flat.addmm_(d_xdbl.reshape(-1, d_xdbl.shape[-1]), x_proj_w.to(dtype))  # the add in the GEMM's epilogue
    _dx, d_conv_w, d_conv_b = conv_backward(x, conv_w, conv_b, True, du, dx_out=dxz[..., :dim])
    return dxz, d_conv_w, d_conv_b, d_xproj_w, d_dt_w, d_out_w, d_out_b, dA, dD, dbias


@_mamba_inner_bwd_op.register_fake
def _(
    xz, conv_w, conv_b, x_proj_w, dt_proj_w, out_proj_w, out_proj_b, A, D, dt_bias, x_dbl, states, grad_out
):
    empty = xz.new_empty((0,))
    return (
        xz.new_empty(tuple(xz.shape)),
        conv_w.new_empty(tuple(conv_w.shape)),
        conv_b.new_empty(tuple(conv_b.shape)) if conv_b is not None else empty,
        x_proj_w.new_empty(tuple(x_proj_w.shape)),
        dt_proj_w.new_empty(tuple(dt_proj_w.shape)),
        out_proj_w.new_empty(tuple(out_proj_w.shape)),
        out_proj_b.new_empty(tuple(out_proj_b.shape)) if out_proj_b is not None else empty,
        A.new_empty(tuple(A.shape)),
        D.new_empty(tuple(D.shape)),
        dt_bias.new_empty(tuple(dt_bias.shape)),
    )


def _setup_context(ctx, inputs, output):
    xz, conv_w, conv_b, x_proj_w, dt_proj_w, out_proj_w, out_proj_b, A, D, dt_bias, save = inputs
    if not save:
        raise RuntimeError("dimlab::mamba_inner_fwd was called with save=False under autograd")
    _out, x_dbl, states = output
    ctx.save_for_backward(
        xz, conv_w, conv_b, x_proj_w, dt_proj_w, out_proj_w, out_proj_b, A, D, dt_bias, x_dbl, states
    )


def _backward(ctx, grad_out, _grad_xdbl, _grad_states):
    saved = ctx.saved_tensors
    grads = _mamba_inner_bwd_op(*saved, grad_out)
    conv_b, out_proj_b = saved[2], saved[6]
    dxz, d_conv_w, d_conv_b, d_xproj_w, d_dt_w, d_out_w, d_out_b, dA, dD, dbias = grads
    return (
        dxz,
        d_conv_w,
        d_conv_b if conv_b is not None else None,
        d_xproj_w,
        d_dt_w,
        d_out_w,
        d_out_b if out_proj_b is not None else None,
        dA,
        dD,
        dbias,
        None,
    )


torch.library.register_autograd("dimlab::mamba_inner_fwd", _backward, setup_context=_setup_context)


def mamba_inner(
    xz: torch.Tensor,
    conv_w: torch.Tensor,
    conv_b: torch.Tensor | None,
    x_proj_w: torch.Tensor,
    dt_proj_w: torch.Tensor,
    out_proj_w: torch.Tensor,
    out_proj_b: torch.Tensor | None,
    A: torch.Tensor,
    D: torch.Tensor,
    dt_bias: torch.Tensor,
) -> torch.Tensor:
    """Mamba's inner mixer on channel-last ``xz`` (batch, L, 2E); returns (batch, L, d_model).

    ``conv_w`` is (E, K); the rest are the mixer's parameters as they are (``A = -exp(A_log)``, fp32 ``D`` and
    ``dt_bias``). softplus is applied to dt + dt_bias, as in Mamba.
    """
    dim = A.shape[0]
    if xz.dim() != 3 or xz.shape[2] != 2 * dim:
        raise ValueError(
            f"mamba_inner (triton): xz must be (batch, L, 2 * {dim}), got shape {tuple(xz.shape)}"
        )
    x, z = _split(xz, dim)
    check_conv_inputs(x, conv_w, conv_b)
    check_scan_inputs(x, x, A, None, None, D, z, dt_bias)
    params = (conv_w, conv_b, x_proj_w, dt_proj_w, out_proj_w, out_proj_b, A, D, dt_bias)
    save = torch.is_grad_enabled() and (
        xz.requires_grad or any(p is not None and p.requires_grad for p in params)
    )
    out, _x_dbl, _states = _mamba_inner_fwd_op(xz, *params, save)
    return out
