"""Selective-scan backends for the Mamba mixer.

All backends take mamba-ssm's argument convention (`selective_scan_fn`), so they are interchangeable::

    u, delta, z : (batch, d_inner, L)
    A           : (d_inner, d_state), real (the mixer passes ``-exp(A_log)``)
    B, C        : (batch, d_state, L), input-dependent
    D, delta_bias : (d_inner,)

and compute, with ``dt = softplus(delta + delta_bias)`` (or without softplus)::

    h_t = exp(dt_t * A) * h_{t-1} + dt_t * B_t * u_t        (state per channel: (d_inner, d_state))
    y_t = <C_t, h_t> + D * u_t
    out = y * silu(z)

Backends:

* ``reference``: a plain loop over time steps. Slow, obviously correct; the test oracle.
* ``torch``: a chunked scan in pure PyTorch with a hand-written backward pass. Runs on any device, no
  per-time-step Python loop, numerically stable (only products of decays in [0, 1]).
* ``cuda``: mamba-ssm's fused CUDA kernel (``selective_scan_fn``). Imported lazily, only here.

``auto`` picks ``cuda`` when the kernels import and the tensors live on a CUDA device, else ``torch``.
Only real ``A`` and the (batch, d_state, L) form of B/C are supported: that is all the Mamba mixer uses.
"""

from __future__ import annotations

import functools
import logging
import math

import torch
import torch.nn.functional as F

logger = logging.getLogger("dimlab")

BACKENDS = ("auto", "cuda", "torch", "reference")
"""Names accepted by :func:`resolve_backend` and :func:`selective_scan`."""

INSTALL_HINT = (
    "Build and install the kernels for this GPU with `make kernels` (see docs/kernels.md), or install "
    "prebuilt wheels with `pip install 'dimlab[cuda]'`; or choose scan backend 'torch' / 'auto'."
)

_logged_choices: set[tuple[str, str, str]] = set()


# --------------------------------------------------------------------------------------------------
# backend selection


@functools.lru_cache(maxsize=1)
def _kernel_import_error() -> str | None:
    """Import mamba-ssm's scan interface and causal-conv1d once; the error text if that fails, else None."""
    try:
        import causal_conv1d  # noqa: F401
        import mamba_ssm.ops.selective_scan_interface  # noqa: F401
    except Exception as err:  # a broken build raises ImportError, OSError (undefined symbol) or RuntimeError
        return f"{type(err).__name__}: {err}"
    return None


def kernels_available() -> bool:
    """True when mamba-ssm's selective-scan kernel and causal-conv1d import in this environment."""
    return _kernel_import_error() is None


def resolve_backend(requested: str, device: torch.device | str) -> str:
    """Turn a requested scan backend into the one that will run for tensors on ``device``.

    ``auto`` becomes ``cuda`` when the tensors are on a CUDA device and the mamba-ssm / causal-conv1d
    kernels import, else ``torch`` (the choice is logged once on the ``dimlab`` logger). ``cuda`` is
    checked and raises a RuntimeError that says how to install the kernels when they are missing.
    ``torch`` and ``reference`` are returned unchanged.
    """
    if requested not in BACKENDS:
        raise ValueError(f"unknown scan backend {requested!r}; expected one of {', '.join(BACKENDS)}")
    device = torch.device(device)
    if requested == "auto":
        on_cuda = device.type == "cuda"
        resolved = "cuda" if on_cuda and kernels_available() else "torch"
        key = (requested, resolved, device.type)
        if key not in _logged_choices:
            _logged_choices.add(key)
            if not on_cuda:
                reason = f"tensors on {device.type}"
            elif resolved == "cuda":
                reason = "mamba-ssm kernels found"
            else:
                reason = f"mamba-ssm kernels unavailable: {_kernel_import_error()}"
            logger.info("selective scan backend 'auto' -> '%s' (%s)", resolved, reason)
        return resolved
    if requested == "cuda":
        if device.type != "cuda":
            raise RuntimeError(
                f"scan backend 'cuda' needs tensors on a CUDA device, got {device}; use 'auto' or 'torch'."
            )
        error = _kernel_import_error()
        if error is not None:
            raise RuntimeError(
                f"scan backend 'cuda' requested but mamba-ssm / causal-conv1d do not import ({error}). "
                + INSTALL_HINT
            )
    return requested


# --------------------------------------------------------------------------------------------------
# public entry point


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    backend: str = "torch",
) -> torch.Tensor:
    """Selective scan with mamba-ssm's ``selective_scan_fn`` convention; returns y (batch, d_inner, L).

    ``backend`` is one of :data:`BACKENDS`; see :func:`resolve_backend`. The output has ``u``'s dtype.
    """
    _check_shapes(u, delta, A, B, C, D, z, delta_bias)
    resolved = resolve_backend(backend, u.device)
    implementation = {
        "torch": selective_scan_torch,
        "reference": selective_scan_reference,
        "cuda": selective_scan_cuda,
    }[resolved]
    return implementation(u, delta, A, B, C, D, z, delta_bias, delta_softplus)


def _check_shapes(u, delta, A, B, C, D, z, delta_bias) -> None:
    """Raise a ValueError naming the argument whose shape breaks the selective-scan convention."""
    if u.dim() != 3:
        raise ValueError(f"selective_scan: u must be (batch, d_inner, L), got shape {tuple(u.shape)}")
    batch, dim, length = u.shape
    if A.dim() != 2 or A.shape[0] != dim or A.is_complex():
        raise ValueError(f"selective_scan: A must be real (d_inner={dim}, d_state), got {tuple(A.shape)}")
    n = A.shape[1]
    expected = {"delta": (delta, (batch, dim, length)), "B": (B, (batch, n, length))}
    expected["C"] = (C, (batch, n, length))
    if z is not None:
        expected["z"] = (z, (batch, dim, length))
    if D is not None:
        expected["D"] = (D, (dim,))
    if delta_bias is not None:
        expected["delta_bias"] = (delta_bias, (dim,))
    for name, (tensor, shape) in expected.items():
        if tuple(tensor.shape) != shape:
            raise ValueError(f"selective_scan: {name} must have shape {shape}, got {tuple(tensor.shape)}")


def _compute_dtype(u: torch.Tensor) -> torch.dtype:
    """float64 inputs are scanned in float64, everything else (fp32, bf16, fp16) in float32."""
    return torch.float64 if u.dtype == torch.float64 else torch.float32


# --------------------------------------------------------------------------------------------------
# reference: one Python step per time step


def selective_scan_reference(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False
) -> torch.Tensor:
    """Sequential selective scan, fp32 (or fp64) inside: the test oracle. Autograd through the loop.

    Memory: O(batch * d_inner * d_state * L) for the discretised A and B·u, plus one state per step
    kept for autograd.
    """
    dtype_in = u.dtype
    cd = _compute_dtype(u)
    u, delta, A, B, C = (t.to(cd) for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.to(cd)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    decay = torch.exp(delta.unsqueeze(-1) * A[:, None, :])  # (b, d, L, n)
    drive = (delta * u).unsqueeze(-1) * B.transpose(1, 2).unsqueeze(1)  # (b, d, L, n)
    state = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    outputs = []
    for t in range(u.shape[-1]):
        state = decay[:, :, t] * state + drive[:, :, t]
        outputs.append(torch.einsum("bdn,bn->bd", state, C[:, :, t]))
    y = torch.stack(outputs, dim=-1)
    if D is not None:
        y = y + u * D.to(cd)[:, None]
    if z is not None:
        y = y * F.silu(z.to(cd))
    return y.to(dtype_in)


# --------------------------------------------------------------------------------------------------
# torch: chunked scan with a hand-written backward


def selective_scan_torch(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, chunk_size: int | None = None
) -> torch.Tensor:
    """Fast pure-PyTorch selective scan (CPU or GPU, autograd-capable); fp32 (fp64 for fp64 input) inside.

    The linear recurrence h_t = a_t h_{t-1} + x_t is split into chunks of T steps (T ~ sqrt(L) by
    default): one vectorised pass scans all chunks at once from a zero state (T Python steps), and a
    second pass carries each chunk's final state into the next one, scaled by the running product of
    the decays (L/T Python steps). So there are about 2*sqrt(L) Python steps, not L, and every factor
    is a product of decays a_t = exp(dt*A) in [0, 1]: unlike the log-space cumsum trick
    (exp(S_t) * cumsum(exp(-S_s) x_s)), nothing can overflow, whatever dt*A is.

    The backward pass is written out (an autograd.Function), not traced: it recomputes the states and
    runs the adjoint recurrence lambda_t = g_t + a_{t+1} lambda_{t+1} with the same chunked scan, like
    mamba-ssm's kernel, so only the inputs are saved between forward and backward.

    Memory: about 4 tensors of batch * d_inner * d_state * L (compute dtype) in forward and 6 in
    backward, i.e. O(B*E*N*L); nothing is O(L^2) or O(chunk^2). Autocast is disabled inside.
    """
    return _ChunkedSelectiveScan.apply(u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus), chunk_size)


def _default_chunk(length: int) -> int:
    """Chunk length ~sqrt(L): balances the in-chunk and the across-chunk Python loops."""
    return max(1, math.ceil(math.sqrt(length)))


def _time_major(t: torch.Tensor, dtype: torch.dtype, padded_length: int) -> torch.Tensor:
    """(batch, channels, L) -> (L_padded, batch, channels), zero-padded at the end, contiguous."""
    t = t.to(dtype).permute(2, 0, 1)
    pad = padded_length - t.shape[0]
    if pad:
        t = torch.cat([t, t.new_zeros((pad,) + tuple(t.shape[1:]))])
    return t.contiguous()


def _chunked_linear_scan(decay: torch.Tensor, drive: torch.Tensor, chunk: int, reverse: bool = False):
    """Solve h_t = decay_t * h_{t-1} + drive_t (h_{-1} = 0) along dim 0, in place.

    With ``reverse=True`` it solves h_t = decay_t * h_{t+1} + drive_t from the end instead. Dim 0 must
    be a multiple of ``chunk``; both tensors must be contiguous. ``drive`` is overwritten with the
    result, which is returned, and ``decay`` with its running product inside each chunk: big tensors
    are costly to allocate (first-touch page faults dominate on CPU), so none is allocated here.
    """
    n_chunks = drive.shape[0] // chunk
    a = decay.view(n_chunks, chunk, -1)
    h = drive.view(n_chunks, chunk, -1)
    steps = range(chunk - 2, -1, -1) if reverse else range(1, chunk)
    for j in steps:  # pass 1: every chunk from a zero state, all chunks at once
        prev = j + 1 if reverse else j - 1
        h[:, j].addcmul_(a[:, j], h[:, prev])
        if n_chunks > 1:
            a[:, j].mul_(a[:, prev])  # a becomes the running product of decays within the chunk
    # pass 2: carry each chunk's boundary state into the next chunk, scaled by the running decay
    if reverse:
        for c in range(n_chunks - 2, -1, -1):
            h[c].addcmul_(a[c], h[c + 1, 0])
    else:
        for c in range(1, n_chunks):
            h[c].addcmul_(a[c], h[c - 1, chunk - 1])
    return drive


class _ScanInputs:
    """The inputs of one scan, converted to the compute dtype, time-major and padded to whole chunks."""

    def __init__(self, u, delta, A, B, C, D, z, delta_bias, softplus, chunk_size):
        self.length = u.shape[-1]
        self.chunk = chunk_size or _default_chunk(self.length)
        if self.chunk < 1:
            raise ValueError(f"selective_scan_torch: chunk_size must be >= 1, got {chunk_size}")
        padded = math.ceil(self.length / self.chunk) * self.chunk
        cd = _compute_dtype(u)
        self.dtype = cd
        self.u = _time_major(u, cd, padded)  # (Lp, b, e)
        raw = delta.to(cd)
        if delta_bias is not None:
            raw = raw + delta_bias.to(cd)[:, None]
        self.softplus = softplus
        self.raw_delta = _time_major(raw, cd, padded)
        dt = F.softplus(raw) if softplus else raw
        self.dt = _time_major(dt, cd, padded)  # padded steps have dt = 0: decay 1, drive 0
        self.A = A.to(cd)
        self.B = _time_major(B, cd, padded)  # (Lp, b, n)
        self.C = _time_major(C, cd, padded)
        self.D = D.to(cd) if D is not None else None
        self.z = _time_major(z, cd, padded) if z is not None else None

    def decay(self, shift: int = 0) -> torch.Tensor:
        """exp(dt_{t+shift} * A), (Lp, b, e, n); steps past the end get dt = 0."""
        dt = self.dt
        if shift:
            dt = torch.cat([dt[shift:], dt.new_zeros((shift,) + tuple(dt.shape[1:]))])
        return (dt.unsqueeze(-1) * self.A).exp_()

    def drive(self) -> torch.Tensor:
        """dt_t * u_t * B_t, (Lp, b, e, n)."""
        return (self.dt * self.u).unsqueeze(-1) * self.B.unsqueeze(2)

    def states(self) -> torch.Tensor:
        """The scan states h_t, (Lp, b, e, n)."""
        return _chunked_linear_scan(self.decay(), self.drive(), self.chunk)

    def to_channels_first(self, t: torch.Tensor) -> torch.Tensor:
        """(Lp, b, c) -> (b, c, L), dropping the padding."""
        return t[: self.length].permute(1, 2, 0)


class _ChunkedSelectiveScan(torch.autograd.Function):
    """Autograd wrapper of the chunked scan; see :func:`selective_scan_torch`."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk_size):
        with torch.autocast(device_type=u.device.type, enabled=False):
            s = _ScanInputs(u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk_size)
            h = s.states()
            y = torch.einsum("tben,tbn->tbe", h, s.C)
            del h
            if s.D is not None:
                y = y + s.u * s.D
            if s.z is not None:
                y = y * F.silu(s.z)
            out = s.to_channels_first(y).to(u.dtype)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias)
        ctx.delta_softplus = delta_softplus
        ctx.chunk_size = chunk_size
        return out

    @staticmethod
    def backward(ctx, grad_out):
        u, delta, A, B, C, D, z, delta_bias = ctx.saved_tensors
        with torch.autocast(device_type=u.device.type, enabled=False):
            s = _ScanInputs(u, delta, A, B, C, D, z, delta_bias, ctx.delta_softplus, ctx.chunk_size)
            grads = _scan_backward(s, _time_major(grad_out, s.dtype, s.u.shape[0]))
        inputs = {"u": u, "delta": delta, "A": A, "B": B, "C": C, "D": D, "z": z, "delta_bias": delta_bias}
        result = []
        for (name, tensor), needed in zip(inputs.items(), ctx.needs_input_grad[:8], strict=True):
            grad = grads.get(name)
            result.append(grad.to(tensor.dtype) if needed and grad is not None else None)
        return (*result, None, None)


def _scan_backward(s: _ScanInputs, g: torch.Tensor) -> dict[str, torch.Tensor]:
    """Gradients of the scan w.r.t. every input, given the output gradient g (Lp, b, e), time-major."""
    h = s.states()
    grads: dict[str, torch.Tensor] = {}
    if s.z is not None:
        y = torch.einsum("tben,tbn->tbe", h, s.C)
        if s.D is not None:
            y = y + s.u * s.D
        sig = torch.sigmoid(s.z)
        grads["z"] = s.to_channels_first(g * y * sig * (1 + s.z * (1 - sig)))
        g = g * s.z * sig
    grad_u = torch.zeros_like(s.u)
    if s.D is not None:
        grads["D"] = (g * s.u).sum(dim=(0, 1))
        grad_u = g * s.D
    grads["C"] = s.to_channels_first(torch.einsum("tbe,tben->tbn", g, h))

    # adjoint: lambda_t = dL/dh_t (total) = C_t g_t + a_{t+1} lambda_{t+1}
    lam = _chunked_linear_scan(s.decay(shift=1), g.unsqueeze(-1) * s.C.unsqueeze(2), s.chunk, reverse=True)
    # d/d(dt_t*A) of a_t h_{t-1} is lambda_t * a_t * h_{t-1} = lambda_t * (h_t - drive_t)
    grad_log_decay = h.sub_(s.drive()).mul_(lam)
    del h
    grads["A"] = torch.einsum("tben,tbe->en", grad_log_decay, s.dt)
    grad_dt = torch.einsum("tben,en->tbe", grad_log_decay, s.A)
    del grad_log_decay
    lam_b = torch.einsum("tben,tbn->tbe", lam, s.B)  # sum_n lambda * B
    grads["B"] = s.to_channels_first(torch.einsum("tben,tbe->tbn", lam, s.dt * s.u))
    del lam
    grad_dt = grad_dt + lam_b * s.u
    grad_u = grad_u + lam_b * s.dt
    grads["u"] = s.to_channels_first(grad_u)
    grad_raw = grad_dt * torch.sigmoid(s.raw_delta) if s.softplus else grad_dt
    grads["delta"] = s.to_channels_first(grad_raw)
    grads["delta_bias"] = grad_raw.sum(dim=(0, 1))
    return grads


# --------------------------------------------------------------------------------------------------
# cuda: mamba-ssm's kernel


def selective_scan_cuda(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False
) -> torch.Tensor:
    """mamba-ssm's fused CUDA selective scan (``selective_scan_fn``), imported here and only here.

    A, D and delta_bias are passed in fp32, as mamba-ssm's Mamba does (the kernel's weight type).
    """
    error = _kernel_import_error()
    if error is not None:
        raise RuntimeError(f"mamba-ssm selective scan kernel unavailable ({error}). " + INSTALL_HINT)
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

    return selective_scan_fn(
        u,
        delta,
        A.float(),
        B,
        C,
        D.float() if D is not None else None,
        z,
        delta_bias.float() if delta_bias is not None else None,
        delta_softplus,
    )
