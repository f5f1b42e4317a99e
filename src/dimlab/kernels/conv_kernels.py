"""Triton kernels of the channel-last causal depthwise conv1d (+ SiLU) that feeds Mamba's scan.

``out[b, t, e] = act(bias[e] + sum_k w[e, k] * x[b, t - (K - 1) + k, e])`` with x = 0 before t = 0, i.e.
``nn.Conv1d(E, E, K, groups=E, padding=K - 1)(x)[..., :L]`` on (batch, L, E) tensors of any strides.

Each program owns ``BT`` steps of one batch row and ``BE`` channels and walks its steps in order (unrolled),
keeping the last K inputs (and, in the backward, the last K gradients at the pre-activation) in registers as
a sliding window: every input and gradient is loaded once, plus a halo of K - 1 steps per tile, so the kernels
move little more than the bytes they must read and write. (A tile of [BT, BE] loaded K times at K shifts
costs K-fold L1/L2 traffic; the backward, which recomputes the pre-activations, K^2-fold.)

The backward recomputes the pre-activation where it needs it, so nothing but x is kept between the passes.
dW and d bias are written as per-program partials and summed afterwards (deterministic, no atomics).
"""

from __future__ import annotations

import triton
import triton.language as tl

from dimlab.kernels.scan_kernels import _zeros_tuple


@triton.jit
def _load_taps(w_ptr, s_we, s_wk, e, e_mask, K: tl.constexpr):
    """The K taps of each channel: a tuple of K fp32 [BE] vectors."""
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
def _load_step(base, t, s_t, e_mask, L):
    """Row t of a (L, BE) slab as fp32 (zeros outside 0 <= t < L)."""
    ok = (t >= 0) & (t < L)
    return tl.load(base + t * s_t, mask=e_mask & ok, other=0.0).to(tl.float32)


@triton.jit
def _slide(window, value, K: tl.constexpr):
    """The window of the last K values, with ``value`` in and the oldest out (tuples of [BE] vectors)."""
    out = ()
    for k in tl.static_range(1, K):
        out = out + (window[k],)
    return out + (value,)


@triton.jit
def _taps_dot(w, window, bias, K: tl.constexpr):
    """bias + sum_k w[k] window[k]."""
    acc = bias
    for k in tl.static_range(K):
        acc += w[k] * window[k]
    return acc


@triton.jit
def conv_fwd_kernel(
    x_ptr, w_ptr, bias_ptr, out_ptr,
    L, E, s_xb, s_xt, s_xe, s_we, s_wk,
    K: tl.constexpr, BT: tl.constexpr, BE: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr,
):  # fmt: skip
    """Steps [t0, t0 + BT) of BE channels of the causal conv (+ SiLU); out is (B, L, E) contiguous, x's dtype."""
    pid_b = tl.program_id(0).to(tl.int64)
    t0 = tl.program_id(1) * BT
    e = tl.program_id(2) * BE + tl.arange(0, BE)
    e_mask = e < E
    w = _load_taps(w_ptr, s_we, s_wk, e, e_mask, K)
    bias = _load_bias(bias_ptr, e, e_mask, HAS_BIAS)
    x_base = x_ptr + pid_b * s_xb + e * s_xe
    o_base = out_ptr + pid_b * L * E + e
    window = _zeros_tuple(BE, K)  # x[t - K + 1 .. t], oldest first
    for k in tl.static_range(K - 1):
        window = _slide(window, _load_step(x_base, t0 - (K - 1) + k, s_xt, e_mask, L), K)
    for i in tl.static_range(BT):
        t = t0 + i
        window = _slide(window, _load_step(x_base, t, s_xt, e_mask, L), K)
        pre = _taps_dot(w, window, bias, K)
        y = pre * tl.sigmoid(pre) if SILU else pre
        tl.store(o_base + t * E, y.to(out_ptr.dtype.element_ty), mask=e_mask & (t < L))


@triton.jit
def conv_bwd_kernel(
    x_ptr, w_ptr, bias_ptr, g_ptr, dx_ptr, dw_part_ptr, db_part_ptr,
    L, E, s_xb, s_xt, s_xe, s_we, s_wk, s_gb, s_gt, s_ge, s_dxb, s_dxt,
    K: tl.constexpr, BT: tl.constexpr, BE: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr,
):  # fmt: skip
    """Gradients of steps [t0, t0 + BT): dx (B, L, E) with contiguous channels (strides ``s_dxb``, ``s_dxt``),
    dW partials (B*nT, K, E), d bias (B*nT, E).

    dx[t] = sum_k w[k] gp[t + K - 1 - k], with gp the gradient at the pre-activation, so the walk runs K - 1
    steps past the tile (recomputing gp there); dW and d bias sum gp over the tile's own steps only.
    """
    pid_b = tl.program_id(0).to(tl.int64)
    pid_t = tl.program_id(1)
    n_t = tl.num_programs(1)
    t0 = pid_t * BT
    e = tl.program_id(2) * BE + tl.arange(0, BE)
    e_mask = e < E
    w = _load_taps(w_ptr, s_we, s_wk, e, e_mask, K)
    bias = _load_bias(bias_ptr, e, e_mask, HAS_BIAS)
    x_base = x_ptr + pid_b * s_xb + e * s_xe
    g_base = g_ptr + pid_b * s_gb + e * s_ge
    dx_base = dx_ptr + pid_b * s_dxb + e
    zero = tl.zeros([BE], tl.float32)
    xwin = _zeros_tuple(BE, K)  # x[t - K + 1 .. t]
    for k in tl.static_range(K - 1):
        xwin = _slide(xwin, _load_step(x_base, t0 - (K - 1) + k, s_xt, e_mask, L), K)
    gwin = _zeros_tuple(BE, K)  # gp[t - K + 1 .. t]; entries before t0 are never used
    dw = _zeros_tuple(BE, K)
    db = zero
    for i in tl.static_range(BT + K - 1):
        t = t0 + i
        xwin = _slide(xwin, _load_step(x_base, t, s_xt, e_mask, L), K)
        gp = _load_step(g_base, t, s_gt, e_mask, L)
        if SILU:
            pre = _taps_dot(w, xwin, bias, K)
            sig = tl.sigmoid(pre)
            gp = gp * sig * (1.0 + pre * (1.0 - sig))
        if i < BT:
            dwn = ()
            for k in tl.static_range(K):
                dwn = dwn + (dw[k] + gp * xwin[k],)
            dw = dwn
            db += gp
        gwin = _slide(gwin, gp, K)
        if i >= K - 1:
            tx = t - (K - 1)
            dxv = zero
            for s in tl.static_range(K):
                dxv += w[K - 1 - s] * gwin[s]
            tl.store(dx_base + tx * s_dxt, dxv.to(dx_ptr.dtype.element_ty), mask=e_mask & (tx < L))
    part = (pid_b * n_t + pid_t) * K * E
    for k in tl.static_range(K):
        tl.store(dw_part_ptr + part + k * E + e, dw[k], mask=e_mask)
    if HAS_BIAS:
        tl.store(db_part_ptr + (pid_b * n_t + pid_t) * E + e, db, mask=e_mask)
