"""Obviously correct, slow versions of the Triton kernels: the oracles of the kernel tests.

Both work on channel-last (batch, L, channels) tensors like the kernels, in fp64 (or the input's dtype when it
is fp64 already) and with plain autograd, so their gradients are the reference gradients too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """One Python step per time step: h_t = exp(dt_t A) h_{t-1} + dt_t u_t B_t, y_t = C_t . h_t + D u_t.

    Shapes as :func:`dimlab.kernels.selective_scan`; returns fp64 (batch, L, E). softplus has mamba-ssm's
    threshold (identity above 20), which is also torch's default.
    """
    f64 = torch.float64
    u, delta, A, B, C = (t.to(f64) for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.to(f64)
    if delta_softplus:
        delta = F.softplus(delta, threshold=20.0)
    state = u.new_zeros(u.shape[0], u.shape[2], A.shape[1])  # (b, E, N)
    outputs = []
    for t in range(u.shape[1]):
        decay = torch.exp(delta[:, t, :, None] * A)
        state = decay * state + (delta[:, t] * u[:, t])[:, :, None] * B[:, t, None, :]
        outputs.append(torch.einsum("ben,bn->be", state, C[:, t]))
    y = torch.stack(outputs, dim=1)
    if D is not None:
        y = y + u * D.to(f64)
    if z is not None:
        y = y * F.silu(z.to(f64))
    return y


def causal_conv1d_ref(x, weight, bias=None, silu=True):
    """``nn.Conv1d(E, E, K, groups=E, padding=K-1)`` cut to L steps, on (batch, L, E); weight (E, K); fp64."""
    k = weight.shape[-1]
    out = F.conv1d(
        x.to(torch.float64).transpose(1, 2),
        weight.to(torch.float64).reshape(weight.shape[0], 1, k),
        bias.to(torch.float64) if bias is not None else None,
        padding=k - 1,
        groups=weight.shape[0],
    )[..., : x.shape[1]]
    out = out.transpose(1, 2)
    return F.silu(out) if silu else out
