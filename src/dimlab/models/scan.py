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
* ``triton``: dimlab's own Triton kernels (:mod:`dimlab.kernels`), channel-last, nothing to build. Here they
  are called on transposed views of the channel-first inputs; the Mamba mixer feeds them its (batch, L, E)
  tokens directly.
* ``cuda``: mamba-ssm's fused CUDA kernel (``selective_scan_fn``). Imported lazily, only here.

``auto`` picks ``triton`` when the tensors live on a CUDA device and Triton imports (CUDA builds of torch ship
it), else ``cuda`` when mamba-ssm's kernels import, else ``torch``. Only real ``A`` and the (batch, d_state, L)
form of B/C are supported: that is all the Mamba mixer uses.
"""

from __future__ import annotations

import importlib
import logging
import math
import os

import torch
import torch.nn.functional as F

logger = logging.getLogger("dimlab")

BACKENDS = ("auto", "triton", "cuda", "torch", "reference")
"""Names accepted by :func:`resolve_backend` and :func:`selective_scan`."""

INSTALL_HINT = (
    "Build and install the kernels for this GPU with `make kernels` (see docs/kernels.md), or install "
    "prebuilt wheels with `pip install 'dimlab[cuda]'`; or choose scan backend 'triton', 'torch' or 'auto'."
)

_logged_choices: set[tuple[str, str, str]] = set()


# --------------------------------------------------------------------------------------------------
# backend selection


_import_errors: dict[str, str | None] = {}


@torch.compiler.assume_constant_result  # under torch.compile: run once, not traced (imports cannot be)
def _import_error(module: str) -> str | None:
    """Import ``module`` once; the error text if that fails, else None (remembered for later calls)."""
    if module not in _import_errors:
        try:
            importlib.import_module(module)
            _import_errors[module] = None
        except (
            Exception
        ) as err:  # a broken build raises ImportError, OSError (undefined symbol) or RuntimeError
            _import_errors[module] = f"{type(err).__name__}: {err}"
    return _import_errors[module]


def _kernel_import_error() -> str | None:
    """Import mamba-ssm's scan interface and causal-conv1d once; the error text if that fails, else None."""
    return _import_error("causal_conv1d") or _import_error("mamba_ssm.ops.selective_scan_interface")


def kernels_available() -> bool:
    """True when mamba-ssm's selective-scan kernel and causal-conv1d import in this environment."""
    return _kernel_import_error() is None


def _triton_import_error() -> str | None:
    """Import dimlab's Triton kernels (and so Triton) once; the error text if that fails, else None."""
    return _import_error("dimlab.kernels")


def triton_available() -> bool:
    """True when Triton and dimlab's Triton kernels import in this environment."""
    return _triton_import_error() is None


def triton_runs_on(device: torch.device) -> bool:
    """True when the Triton kernels can run on tensors of ``device``: a CUDA device, or the CPU interpreter."""
    if device.type == "cuda":
        return True
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def resolve_backend(requested: str, device: torch.device | str) -> str:
    """Turn a requested scan backend into the one that will run for tensors on ``device``.

    ``auto`` becomes ``triton`` when the tensors are on a CUDA device and Triton imports, else ``cuda`` when
    they are on a CUDA device and the mamba-ssm / causal-conv1d kernels import, else ``torch`` (the choice is
    logged once on the ``dimlab`` logger). ``triton`` and ``cuda`` are checked and raise a RuntimeError that
    says what is missing. ``torch`` and ``reference`` are returned unchanged.
    """
    if requested not in BACKENDS:
        raise ValueError(f"unknown scan backend {requested!r}; expected one of {', '.join(BACKENDS)}")
    device = torch.device(device)
    if requested == "auto":
        on_cuda = device.type == "cuda"
        if on_cuda and triton_available():
            resolved, reason = "triton", "Triton kernels, CUDA device"
        elif on_cuda and kernels_available():
            resolved, reason = (
                "cuda",
                f"mamba-ssm kernels found; Triton unavailable: {_triton_import_error()}",
            )
        elif on_cuda:
            resolved = "torch"
            reason = f"Triton unavailable ({_triton_import_error()}), mamba-ssm unavailable ({_kernel_import_error()})"
        else:
            resolved, reason = "torch", f"tensors on {device.type}"
        key = (requested, resolved, device.type)
        if key not in _logged_choices:
            _logged_choices.add(key)
            logger.info("selective scan backend 'auto' -> '%s' (%s)", resolved, reason)
        return resolved
    if requested == "triton":
        error = _triton_import_error()
        if error is not None:
            raise RuntimeError(
                f"scan backend 'triton' requested but Triton does not import ({error}); "
                "install a CUDA build of torch (it ships Triton) or choose 'torch' / 'auto'."
            )
        if not triton_runs_on(device):
            raise RuntimeError(
                f"scan backend 'triton' needs tensors on a CUDA device, got {device}; use 'auto' or 'torch' "
                "(TRITON_INTERPRET=1 runs the kernels on the CPU, slowly, for testing)."
            )
        return requested
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
        "triton": selective_scan_triton,
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

    The linear recurrence h_t = a_t h_{t-1} + x_t (a_t = exp(dt_t A), x_t = dt_t u_t B_t) is split into
    chunks of T steps (T ~ sqrt(L) by default). Pass 1 scans all chunks at once from a zero state (T
    Python steps); pass 2 adds each chunk's incoming state times the decay accumulated since the chunk
    start, exp(A * sum dt), which never exceeds 1 (L/T Python steps). So there are about 2*sqrt(L)
    Python steps, not L, and nothing can overflow whatever dt*A is, unlike the log-space cumsum trick
    exp(S_t) * cumsum(exp(-S_s) x_s). Decays and drives are formed one time slice at a time from the
    small (L, batch, d_inner) tensors, so the states are the only (L, batch, d_inner, d_state) tensor.

    The backward pass is written out (an autograd.Function), not traced: it recomputes the states and
    runs the adjoint recurrence lambda_t = C_t g_t + a_{t+1} lambda_{t+1} backwards with the same
    chunked scan, as mamba-ssm's kernel does, so only the inputs are saved between the passes.

    Memory: one tensor of batch * d_inner * d_state * L (compute dtype) in forward and two in backward,
    plus 1/T of that in temporaries: O(B*E*N*L), nothing O(L^2) or O(chunk^2). Requires dt*A <= 0
    (decays in [0, 1]), as with softplus(dt) and A = -exp(A_log). Autocast is disabled inside.
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


def _decay(log_decay: torch.Tensor) -> torch.Tensor:
    """exp(log_decay) in place, with the argument floored where exp would leave the normal range.

    On x86 CPUs exp() is 15-40x slower when its result is subnormal or underflows, and a decay past
    e^-80 (fp32) / e^-700 (fp64) changes no result: it scales a state by < 2e-35 (1e-304).
    """
    floor = -700.0 if log_decay.dtype == torch.float64 else -80.0
    return log_decay.clamp_min_(floor).exp_()


def _chunked_outer_scan(rate, A, left, right, chunk: int, reverse: bool = False) -> torch.Tensor:
    """States of h_t = exp(rate_t * A) * h_{t-1} + left_t (x) right_t, h_{-1} = 0, as (Lp, b, e, n).

    rate, left: (Lp, b, e); right: (Lp, b, n); A: (e, n); Lp a multiple of ``chunk``; (x) is the outer
    product over (e, n). With ``reverse=True`` the recurrence runs from the end: h_t = exp(rate_t * A) *
    h_{t+1} + left_t (x) right_t. Only the result is allocated at full size (big tensors are costly:
    first-touch page faults dominate on CPU); decays and drives are built one time slice at a time.
    """
    length, batch, dim = rate.shape
    n_chunks = length // chunk
    h = rate.new_empty(n_chunks, chunk, batch, dim, A.shape[1])
    rates = rate.view(n_chunks, chunk, batch, dim, 1)
    lefts = left.view(n_chunks, chunk, batch, dim, 1)
    rights = right.view(n_chunks, chunk, batch, 1, -1)
    steps = range(chunk - 1, -1, -1) if reverse else range(chunk)
    prev = None
    for j in steps:  # pass 1: every chunk from a zero state, all chunks at once
        if torch.compiler.is_compiling():  # Dynamo cannot trace out= into a strided view
            h[:, j] = lefts[:, j] * rights[:, j]
        else:  # no temporary: on CPU a fresh large tensor costs its first-touch page faults
            torch.mul(lefts[:, j], rights[:, j], out=h[:, j])
        if prev is not None:
            h[:, j].addcmul_(_decay(rates[:, j] * A), h[:, prev])
        prev = j
    # pass 2: add the state entering each chunk times the decay accumulated since the chunk's start
    if n_chunks > 1:
        per_chunk = rate.view(n_chunks, chunk, batch, dim)
        accumulated = (per_chunk.flip(1).cumsum(1).flip(1) if reverse else per_chunk.cumsum(1)).unsqueeze(-1)
        chunks = range(n_chunks - 2, -1, -1) if reverse else range(1, n_chunks)
        for c in chunks:
            incoming = h[c + 1, 0] if reverse else h[c - 1, chunk - 1]
            h[c].addcmul_(_decay(accumulated[c] * A), incoming)
    return h.view(length, batch, dim, -1)


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

    def states(self) -> torch.Tensor:
        """The scan states h_t, (Lp, b, e, n)."""
        return _chunked_outer_scan(self.dt, self.A, self.dt * self.u, self.B, self.chunk)

    def to_channels_first(self, t: torch.Tensor) -> torch.Tensor:
        """(Lp, b, c) -> (b, c, L), dropping the padding."""
        return t[: self.length].permute(1, 2, 0)


class _ChunkedSelectiveScan(torch.autograd.Function):
    """Autograd wrapper of the chunked scan; see :func:`selective_scan_torch`."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk_size):
        with torch.autocast(device_type=u.device.type, enabled=False):
            s = _ScanInputs(u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk_size)
            y = torch.einsum("tben,tbn->tbe", s.states(), s.C)
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

    # adjoint: lambda_t = dL/dh_t = C_t g_t + a_{t+1} lambda_{t+1}, i.e. a reverse scan with rate dt_{t+1}
    dt_next = torch.cat([s.dt[1:], torch.zeros_like(s.dt[:1])])
    lam = _chunked_outer_scan(dt_next, s.A, g, s.C, s.chunk, reverse=True)

    # d loss / d(dt_t * A) = lambda_t * a_t * h_{t-1}; reduced one chunk of time steps at a time
    grad_A = torch.zeros_like(s.A)
    grad_dt = torch.zeros_like(s.dt)
    for start in range(1, h.shape[0], s.chunk):  # t = 0 has h_{-1} = 0: no contribution
        rows = slice(start, min(start + s.chunk, h.shape[0]))
        dt_rows = s.dt[rows]
        g_log_decay = _decay(dt_rows.unsqueeze(-1) * s.A).mul_(lam[rows]).mul_(h[start - 1 : rows.stop - 1])
        grad_dt[rows] = (g_log_decay * s.A).sum(-1)
        grad_A += g_log_decay.mul_(dt_rows.unsqueeze(-1)).sum(dim=(0, 1))
    del h
    grads["A"] = grad_A
    # x_t = dt_t u_t B_t: d/d(dt u)_t = sum_n lambda_t B_t, d/dB_t = sum_e lambda_t (dt u)_t
    lam_b = torch.einsum("tben,tbn->tbe", lam, s.B)
    grads["B"] = s.to_channels_first(torch.einsum("tben,tbe->tbn", lam, s.dt * s.u))
    del lam
    grad_dt += lam_b * s.u
    grads["u"] = s.to_channels_first(grad_u + lam_b * s.dt)
    grad_raw = grad_dt * torch.sigmoid(s.raw_delta) if s.softplus else grad_dt
    grads["delta"] = s.to_channels_first(grad_raw)
    grads["delta_bias"] = grad_raw.sum(dim=(0, 1))
    return grads


# --------------------------------------------------------------------------------------------------
# triton: dimlab's kernels


def selective_scan_triton(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False
) -> torch.Tensor:
    """dimlab's Triton scan on the channel-first convention: the kernels read the transposed views in place."""
    from dimlab.kernels import selective_scan as channel_last_scan

    def last(t):
        return t.transpose(1, 2) if t is not None else None

    out = channel_last_scan(
        last(u), last(delta), A, last(B), last(C), D, last(z), delta_bias, delta_softplus=delta_softplus
    )
    return out.transpose(1, 2)


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
