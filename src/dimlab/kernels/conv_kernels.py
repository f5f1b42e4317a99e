"""Triton kernels of the channel-last causal depthwise conv1d (+ SiLU) that feeds Mamba's scan.

``out[b, t, e] = act(bias[e] + sum_k w[e, k] * x[b, t - (K - 1) + k, e])`` with x = 0 before t = 0, i.e.
``nn.Conv1d(E, E, K, groups=E, padding=K - 1)(x)[..., :L]`` on (batch, L, E) tensors of any strides. Each program
owns a [BT, BE] tile of (time, channels); the K shifted loads of x are served from L1/L2.

The backward recomputes the pre-activation where it needs it (the tile and the K - 1 steps after it), so nothing
but x is kept between the passes. dW and d bias are written as per-program partials and summed afterwards.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _conv_pre(x_base, w, bias, t, e_mask, L, s_xt, K: tl.constexpr):
    """bias + sum_k w[k] x[t - (K-1) + k] for a [BT] vector of steps t (tile [BT, BE], fp32)."""
    acc = bias[None, :] + tl.zeros([t.shape[0], bias.shape[0]], tl.float32)
    for k in tl.static_range(K):
        tt = t - (K - 1) + k
        m = (tt >= 0) & (tt < L)
        x = tl.load(x_base + tt[:, None] * s_xt, mask=m[:, None] & e_mask[None, :], other=0.0)
        acc += x.to(tl.float32) * w[k][None, :]
    return acc


@triton.jit
def _load_taps(w_ptr, s_we, s_wk, e, e_mask, K: tl.constexpr):
    out = ()
    for k in tl.static_range(K):
        out = out + (tl.load(w_ptr + e * s_we + k * s_wk, mask=e_mask, other=0.0).to(tl.float32),)
    return out


@triton.jit
def _load_bias(bias_ptr, e, e_mask, HAS_BIAS: tl.constexpr):
    """The per-channel bias as fp32, zeros when the conv has none."""
    if HAS_BIAS:
        return tl.load(bias_ptr + e, mask=e_mask, other=0.0).to(tl.float32)
    return tl.zeros(e.shape, tl.float32)


@triton.jit
def conv_fwd_kernel(
    x_ptr, w_ptr, bias_ptr, out_ptr,
    L, E, s_xb, s_xt, s_xe, s_we, s_wk,
    K: tl.constexpr, BT: tl.constexpr, BE: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr,
):  # fmt: skip
    """One [BT, BE] tile of the causal conv (+ SiLU); out is (B, L, E) contiguous in x's dtype."""
    pid_b = tl.program_id(0).to(tl.int64)
    t = tl.program_id(1) * BT + tl.arange(0, BT)
    e = tl.program_id(2) * BE + tl.arange(0, BE)
    e_mask = e < E
    w = _load_taps(w_ptr, s_we, s_wk, e, e_mask, K)
    bias = _load_bias(bias_ptr, e, e_mask, HAS_BIAS)
    pre = _conv_pre(x_ptr + pid_b * s_xb + e[None, :] * s_xe, w, bias, t, e_mask, L, s_xt, K)
    y = pre * tl.sigmoid(pre) if SILU else pre
    mask = (t < L)[:, None] & e_mask[None, :]
    tl.store(out_ptr + pid_b * L * E + t[:, None] * E + e[None, :], y.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def conv_bwd_kernel(
    x_ptr, w_ptr, bias_ptr, g_ptr, dx_ptr, dw_part_ptr, db_part_ptr,
    L, E, s_xb, s_xt, s_xe, s_we, s_wk, s_gb, s_gt, s_ge,
    K: tl.constexpr, BT: tl.constexpr, BE: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr,
):  # fmt: skip
    """Gradients of one [BT, BE] tile: dx (B, L, E) contiguous, dW partials (B*nT, K, E), d bias (B*nT, E)."""
    pid_b = tl.program_id(0).to(tl.int64)
    pid_t = tl.program_id(1)
    n_t = tl.num_programs(1)
    t = pid_t * BT + tl.arange(0, BT)
    e = tl.program_id(2) * BE + tl.arange(0, BE)
    e_mask = e < E
    w = _load_taps(w_ptr, s_we, s_wk, e, e_mask, K)
    bias = _load_bias(bias_ptr, e, e_mask, HAS_BIAS)
    x_base = x_ptr + pid_b * s_xb + e[None, :] * s_xe
    g_base = g_ptr + pid_b * s_gb + e[None, :] * s_ge
    dx = tl.zeros([BT, BE], tl.float32)
    part = (pid_b * n_t + pid_t) * K * E
    for s in tl.static_range(K):
        # the gradient at the pre-activation of step t + s, which x[t] reaches through tap K - 1 - s
        tp = t + s
        ok = (tp < L)[:, None] & e_mask[None, :]
        g = tl.load(g_base + tp[:, None] * s_gt, mask=ok, other=0.0).to(tl.float32)
        if SILU:
            pre = _conv_pre(x_base, w, bias, tp, e_mask, L, s_xt, K)
            sig = tl.sigmoid(pre)
            g = g * sig * (1.0 + pre * (1.0 - sig))
        g = tl.where(ok, g, 0.0)
        dx += g * w[K - 1 - s][None, :]
        if s == 0:
            for k in tl.static_range(K):
                tt = t - (K - 1) + k
                m = ((tt >= 0) & (tt < L))[:, None] & e_mask[None, :]
                x = tl.load(x_base + tt[:, None] * s_xt, mask=m, other=0.0).to(tl.float32)
                tl.store(dw_part_ptr + part + k * E + e, tl.sum(g * x, axis=0), mask=e_mask)
            if HAS_BIAS:
                tl.store(db_part_ptr + (pid_b * n_t + pid_t) * E + e, tl.sum(g, axis=0), mask=e_mask)
    mask = (t < L)[:, None] & e_mask[None, :]
    tl.store(dx_ptr + pid_b * L * E + t[:, None] * E + e[None, :], dx.to(dx_ptr.dtype.element_ty), mask=mask)
