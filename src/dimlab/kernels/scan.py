"""Launchers and autograd of the Triton selective scan, registered as ``torch.library`` custom ops.

:func:`selective_scan` is mamba-ssm's ``selective_scan_fn`` maths on channel-last tensors::

    u, delta, z : (batch, L, E)        any strides (the halves of an in_proj output work as they are)
    A           : (E, N) real           B, C : (batch, L, N)        D, delta_bias : (E,)

It returns ``out`` (batch, L, E) in u's dtype. The state is fp32 whatever the input dtype (bf16, fp16, fp32).
Gradients flow to every input. The ops ``dimlab::selective_scan_fwd`` / ``dimlab::selective_scan_bwd`` have fake
implementations, so ``torch.compile`` traces through them without graph breaks.

Memory: for the backward the forward keeps the state entering every ``T_SAVE``-th step, fp32:
``batch * ceil(L / T_SAVE) * N * E * 4`` bytes (T_SAVE = 64: 1 byte per (token, channel) at N = 16), besides the
inputs. mamba-ssm keeps one state per 2048 steps but also needs (batch, E, L) copies of its inputs.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from dataclasses import dataclass

import torch
import triton

from dimlab.kernels.scan_kernels import (
    LOG2E,
    scan_bwd_kernel,
    scan_bwd_lambda_kernel,
    scan_carry_kernel,
    scan_fwd_kernel,
)

SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@dataclass(frozen=True)
class ScanConfig:
    """Launch parameters of the scan kernels (defaults from the H200 sweep in benchmarks/RESULTS.md).

    fwd_warps: warps per forward program (one channel per thread, so 32 * fwd_warps channels per program).
    t_save: steps between the states the forward keeps for the backward (memory: 4 * N / t_save bytes per
        (token, channel)). t_sub: steps whose states the backward holds in registers at once (t_save must be a
        multiple of it); the compile time of the backward grows with its square (10-14 s at 2 and 26-31 s at 4
        built for sm_90 on a 2-core CPU, minutes at 8) and 2 and 4 ran equally fast on an H200. bwd_maxnreg: a
        register cap for the backward (None: the compiler's choice, 255). bwd_lanes: lanes per channel in the
        backward, 1 or 2 (2: each lane holds half of a channel's states, about half the registers, twice the
        warps per SM; needs an even N, else 1 is used; 13-21% slower at the training shapes on an H200, so off).
        bwd_waves / bwd_rows: the backward runs on batch slices of bwd_rows rows (None: enough rows for
        bwd_waves programs per SM), which bounds its per-launch buffers. target_warps_per_sm: below this many
        warps per SM the sequence is split into segments that run in parallel (costs a second pass), as many
        as bring it to that many warps per SM; infer_target_warps_per_sm: the warps per SM a split forward
        that keeps no states (sampling) aims at instead (None: target_warps_per_sm). min_segment: the shortest
        segment worth splitting off (training segments are at least t_save long, so below t_save it only
        changes sampling). On the H200 infer_target_warps_per_sm=32 and min_segment=32 made the sampling
        scan 15-19% faster at batch 1 (1024-2048 px) and 38% faster at 256 px; batch 8 is not split.
        prefetch: how many steps ahead the backward's loops ask for their inputs (0: not at all);
        prefetch_level: into which cache, 1 (L1) or 2 (L2); bwd_prefetch_reread: 1 has the backward's second
        level prefetch u, delta and B too, which its first level read one chunk earlier, 0 only z, the output
        gradient and C (always all six where there is no first level, t_sub == t_save). bwd_xor_layout: 1 has the
        backward hold a lane's states in the order that lets the dB / dC reduction skip most selects
        (scan_kernels._xor_layout; used with one lane per channel, N = 16 and bf16 B and C, DiM's training case).
        fwd_prefetch: the same for the forward, which uses it only when its launch has at most
        fwd_prefetch_max_warps warps per SM: on the H200 prefetching 4 steps ahead made the forward 9-27%
        faster at 12-16 warps per SM (512 px fine-tuning, the sampling shapes) and 6-8% slower at 31-47 (the
        256 px training batches), where other warps already hide the load latency.
        fwd_pipeline / bwd_pipeline: 1 loads the next step's inputs into registers before the current step
        computes (the forward's loop; the backward's level-1 recompute), 0 loads each step's inputs when it
        runs; fwd_pipeline 2 does so for u, delta and z only (B / C loaded when used; 64 registers, as
        without). The forward uses fwd_pipeline_low instead at launches of at most fwd_prefetch_max_warps
        warps per SM. bwd_pipeline applies to unsplit backward launches (the training shapes) only. On the
        H200 (2026-12-03, one run): the forward with 1 at 12 warps per SM (512 px fine-tuning, batch-8
        sampling at 1,024 px) 28-34% faster, with 2 at 31-47 (the 256 px training batches) up to 15% faster
        and never slower, 1 there and at the split sampling launches up to 13% slower; the backward with 1
        4-11% faster at the four training shapes, 5-16% slower at two of the three split ones.
        fast_math: 1 computes softplus, sigmoid and reciprocals with the GPU's approximate instructions
        (``rcp.approx``, ``lg2.approx``; relative errors near 1e-7) in a third of the instructions of Triton's
        accurate ``log`` and ``div.full``; 0 with those. The interpreter always uses 0 (no inline assembly).
        On the H200 (2026-12-03, one run, forward + backward): fast_math 1 was 1.5-7% faster than 0 at six of
        the eight bench_scan shapes (2-3% slower at two), bwd_xor_layout 1 1.4-5% faster at five (0.6-3% slower
        at three); bwd_prefetch_reread 0 was faster at two shapes and slower at three, so it stays 1.
    """

    fwd_warps: int = 1
    t_save: int = 64
    t_sub: int = 2
    bwd_maxnreg: int | None = None
    bwd_lanes: int = 1
    bwd_waves: int = 32
    bwd_rows: int | None = None
    target_warps_per_sm: int = 16
    infer_target_warps_per_sm: int | None = 32
    min_segment: int = 32
    prefetch: int = 4
    prefetch_level: int = 2
    fwd_prefetch: int = 4
    fwd_prefetch_max_warps: int = 24
    fwd_pipeline: int = 2
    fwd_pipeline_low: int = 1
    bwd_pipeline: int = 1
    fast_math: int = 1
    bwd_prefetch_reread: int = 1
    bwd_xor_layout: int = 1

    def __post_init__(self) -> None:
        if self.t_save % self.t_sub or self.t_sub < 1:
            raise ValueError(f"ScanConfig: t_save ({self.t_save}) must be a multiple of t_sub ({self.t_sub})")
        if self.bwd_lanes not in (1, 2):
            raise ValueError(f"ScanConfig: bwd_lanes must be 1 or 2, got {self.bwd_lanes}")
        if self.fwd_warps not in (1, 2, 4, 8):
            raise ValueError(f"ScanConfig: fwd_warps must be 1, 2, 4 or 8, got {self.fwd_warps}")
        for name in ("prefetch", "fwd_prefetch"):
            if not 0 <= getattr(self, name) <= 32:
                raise ValueError(f"ScanConfig: {name} must be 0 to 32 steps, got {getattr(self, name)}")
        for name in ("fwd_pipeline", "fwd_pipeline_low"):
            if getattr(self, name) not in (0, 1, 2):
                raise ValueError(f"ScanConfig: {name} must be 0, 1 or 2, got {getattr(self, name)}")
        for name in ("bwd_pipeline", "fast_math", "bwd_prefetch_reread", "bwd_xor_layout"):
            if getattr(self, name) not in (0, 1):
                raise ValueError(f"ScanConfig: {name} must be 0 or 1, got {getattr(self, name)}")
        if self.prefetch_level not in (1, 2):
            raise ValueError(
                f"ScanConfig: prefetch_level must be 1 (L1) or 2 (L2), got {self.prefetch_level}"
            )

    def device_args(self, steps: int | None = None) -> dict[str, int]:
        """The kernels' PF / PF_LEVEL (``steps`` ahead, default ``prefetch``) and FAST (``fast_math``): under the
        interpreter, which cannot run inline assembly, the addresses are computed but no hint is issued, and the
        accurate functions are used."""
        steps = self.prefetch if steps is None else steps
        gpu = not interpreting()
        return {
            "PF": steps,
            "PF_LEVEL": self.prefetch_level if gpu else 0,
            "FAST": self.fast_math if gpu else 0,
        }

    def forward_prefetch(self, warps_per_sm: float) -> int:
        """Steps the forward prefetches ahead at a launch of ``warps_per_sm`` warps per SM (0: none)."""
        return self.fwd_prefetch if warps_per_sm <= self.fwd_prefetch_max_warps else 0

    def forward_pipeline(self, warps_per_sm: float) -> int:
        """The forward's pipelining mode (fwd_pipeline / fwd_pipeline_low) at a launch of ``warps_per_sm``."""
        return self.fwd_pipeline_low if warps_per_sm <= self.fwd_prefetch_max_warps else self.fwd_pipeline


CONFIG_ENV = "DIMLAB_SCAN_CONFIG"


def parse_scan_config(text: str, source: str = CONFIG_ENV) -> dict[str, int | None]:
    """``"prefetch=8,t_sub=4"`` -> ``{"prefetch": 8, "t_sub": 4}`` (``none`` for the optional fields).

    Raises a one-line ValueError naming ``source``, the field and what was expected.
    """
    fields = {f.name for f in dataclasses.fields(ScanConfig)}
    config: dict[str, int | None] = {}
    for pair in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = (x.strip() for x in pair.partition("="))
        if not sep:
            raise ValueError(f"{source}: {pair!r} is not field=value")
        if key not in fields:
            raise ValueError(f"{source}: unknown field {key!r}; expected one of {sorted(fields)}")
        try:
            config[key] = None if value.lower() == "none" else int(value)
        except ValueError:
            raise ValueError(f"{source}: {key}={value!r} is not an integer") from None
    return config


def _config_from_environment() -> ScanConfig:
    text = os.environ.get(CONFIG_ENV, "")
    try:
        return ScanConfig(**parse_scan_config(text))
    except ValueError as err:
        raise ValueError(str(err) if str(err).startswith(CONFIG_ENV) else f"{CONFIG_ENV}: {err}") from None


_config = _config_from_environment()


def set_scan_config(config: ScanConfig) -> ScanConfig:
    """Replace the launch parameters used by every later call (benchmarks); returns the previous ones."""
    global _config
    previous, _config = _config, config
    return previous


def get_scan_config() -> ScanConfig:
    """The launch parameters in use."""
    return _config


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.lru_cache(maxsize=8)
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _num_sms(device: torch.device) -> int:
    if device.type != "cuda":
        return 4  # the interpreter: small, so that CPU tests exercise the split path on tiny shapes
    return _sm_count(device.index if device.index is not None else torch.cuda.current_device())


def num_segments(batch: int, dim: int, length: int, device: torch.device, training: bool) -> int:
    """How many time segments to scan in parallel: 1 unless batch * channels leaves the GPU mostly idle."""
    cfg = _config
    warps = batch * math.ceil(dim / 32)
    sms = _num_sms(device)
    if warps * 2 > cfg.target_warps_per_sm * sms:
        return 1
    per_sm = cfg.target_warps_per_sm
    if not training and cfg.infer_target_warps_per_sm is not None:
        per_sm = cfg.infer_target_warps_per_sm
    target = per_sm * sms
    unit = cfg.t_save if training else 1
    longest = max(1, length // max(cfg.min_segment, unit))
    return max(1, min(math.ceil(target / warps), longest))


def _segment_length(length: int, segments: int, unit: int) -> int:
    """Steps per segment: a multiple of ``unit`` (the state-saving stride when training)."""
    return math.ceil(math.ceil(length / segments) / unit) * unit


def _row_vector_width(n: int, dtype: torch.dtype, stride: int) -> int:
    """How many B/C values one tile load reads (16 bytes when the layout allows, else 1)."""
    if stride != 1:
        return 1
    width = 16 // torch.empty((), dtype=dtype).element_size()
    while n % width:
        width //= 2
    return width


def _pow2(n: int) -> int:
    return 1 << (n - 1).bit_length()


def check_scan_inputs(u, delta, A, B, C, D, z, delta_bias) -> None:
    """Raise a one-line ValueError naming the argument whose shape, dtype or device is unsupported.

    B and C may be None where the caller computes them itself (the fused mixer's x_proj).
    """
    if u.dim() != 3:
        raise ValueError(
            f"selective_scan (triton): u must be (batch, L, d_inner), got shape {tuple(u.shape)}"
        )
    batch, length, dim = u.shape
    if A.is_complex():
        raise ValueError("selective_scan (triton): complex A is not supported (only real A, as DiM uses)")
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"selective_scan (triton): A must be (d_inner={dim}, d_state), got {tuple(A.shape)}")
    n = A.shape[1]
    expected = {"delta": (delta, (batch, length, dim))}
    for name, tensor in (("B", B), ("C", C)):
        if tensor is not None:
            expected[name] = (tensor, (batch, length, n))
    if z is not None:
        expected["z"] = (z, (batch, length, dim))
    if D is not None:
        expected["D"] = (D, (dim,))
    if delta_bias is not None:
        expected["delta_bias"] = (delta_bias, (dim,))
    expected["u"] = (u, (batch, length, dim))
    for name, (tensor, shape) in expected.items():
        if tuple(tensor.shape) != shape:
            raise ValueError(
                f"selective_scan (triton): {name} must have shape {shape}, got {tuple(tensor.shape)}"
            )
        if tensor.dtype not in SUPPORTED_DTYPES:
            raise ValueError(
                f"selective_scan (triton): {name} has dtype {tensor.dtype}; supported: float32, bfloat16, float16"
            )
        if tensor.device != u.device:
            raise ValueError(f"selective_scan (triton): {name} is on {tensor.device}, u on {u.device}")
    if length < 1 or batch < 1 or dim < 1 or n < 1:
        raise ValueError(
            f"selective_scan (triton): empty input (batch {batch}, L {length}, d_inner {dim}, N {n})"
        )
    if u.device.type != "cuda" and not interpreting():
        raise ValueError(
            f"selective_scan (triton): tensors are on {u.device}; the Triton kernels need a CUDA device "
            "(or TRITON_INTERPRET=1 to run them on the CPU for testing)"
        )


def output_view(
    view: torch.Tensor | None, shape: tuple[int, ...], dtype: torch.dtype, device, name: str
) -> torch.Tensor:
    """A fresh contiguous output of ``shape``, or the caller's ``view`` (a slice of a larger buffer) once checked:
    that shape and dtype with contiguous channels, else a one-line ValueError naming ``name``."""
    if view is None:
        return torch.empty(shape, device=device, dtype=dtype)
    if tuple(view.shape) != tuple(shape) or view.stride(-1) != 1 or view.dtype != dtype:
        raise ValueError(
            f"{name} must be {tuple(shape)} {dtype} with contiguous channels, "
            f"got {tuple(view.shape)} {view.dtype} strides {view.stride()}"
        )
    return view


def _a2t(A: torch.Tensor) -> torch.Tensor:
    """A * log2(e) as (N, E) fp32: what the kernels read (a decay is then one exp2)."""
    return (A.float() * LOG2E).t().contiguous()


def _strides3(t: torch.Tensor | None, like: torch.Tensor) -> tuple[int, int, int]:
    return tuple((t if t is not None else like).stride())


def _empty(device) -> torch.Tensor:
    return torch.empty(0, device=device, dtype=torch.float32)


def scan_forward(u, delta, A, B, C, D, z, delta_bias, softplus: bool, save_states: bool):
    """The forward pass: ``(out, states)``; ``states`` is empty unless ``save_states`` (for the backward)."""
    cfg = _config
    batch, length, dim = u.shape
    n = A.shape[1]
    dev = u.device
    a2t = _a2t(A)
    out = torch.empty((batch, length, dim), device=dev, dtype=u.dtype)
    n_chunks = math.ceil(length / cfg.t_save)
    states = (
        torch.empty((batch, n_chunks, n, dim), device=dev, dtype=torch.float32)
        if save_states
        else _empty(dev)
    )
    segments = num_segments(batch, dim, length, dev, training=save_states)
    seg_len = _segment_length(length, segments, cfg.t_save if save_states else 1)
    segments = math.ceil(length / seg_len)
    block = 32 * cfg.fwd_warps
    grid = (batch, triton.cdiv(dim, block), segments)
    warps_per_sm = batch * grid[1] * segments * cfg.fwd_warps / _num_sms(dev)
    dummy = a2t
    common = dict(
        N=n,
        BE=block,
        NV=min(_row_vector_width(n, B.dtype, B.stride(2)), _row_vector_width(n, C.dtype, C.stride(2))),
        T_SAVE=cfg.t_save,
        HAS_D=D is not None,
        HAS_Z=z is not None,
        HAS_BIAS=delta_bias is not None,
        SOFTPLUS=bool(softplus),
        num_warps=cfg.fwd_warps,
        PIPE=cfg.forward_pipeline(warps_per_sm),
        **cfg.device_args(cfg.forward_prefetch(warps_per_sm)),
    )
    d_f = D.float().contiguous() if D is not None else dummy
    bias_f = delta_bias.float().contiguous() if delta_bias is not None else dummy
    z_t = z if z is not None else u
    strides = (*u.stride(), *delta.stride(), *B.stride(), *C.stride(), *_strides3(z, u), *out.stride()[:2])
    hinit = dummy
    if segments > 1:
        hfin = torch.empty((batch, segments, n, dim), device=dev, dtype=torch.float32)
        dtsum = torch.empty((batch, segments, dim), device=dev, dtype=torch.float32)
        scan_fwd_kernel[grid](
            u, delta, a2t, B, C, d_f, z_t, bias_f, out, dummy, dummy, hfin, dtsum,
            length, dim, seg_len, n_chunks, *strides,
            HAS_INIT=False, SAVE=False, STATE_ONLY=True, **common,
        )  # fmt: skip
        hinit = torch.empty_like(hfin)
        scan_carry_kernel[(batch, triton.cdiv(dim, 32))](
            hfin, dtsum, a2t, hinit, dim, segments, N=n, BE=32, REVERSE=False, num_warps=1
        )
    scan_fwd_kernel[grid](
        u, delta, a2t, B, C, d_f, z_t, bias_f, out, hinit, states, dummy, dummy,
        length, dim, seg_len, n_chunks, *strides,
        HAS_INIT=segments > 1, SAVE=save_states, STATE_ONLY=False, **common,
    )  # fmt: skip
    return out, states


def _rows_per_launch(batch: int, programs_per_row: int, device: torch.device) -> int:
    """Batch rows per backward launch: enough programs for ``bwd_waves`` per SM, so that the launch fills the GPU
    while its per-launch buffers (dB / dC partials, the level-1 scratch) stay bounded whatever the batch."""
    cfg = _config
    if cfg.bwd_rows is not None:
        return max(1, min(batch, cfg.bwd_rows))
    return max(1, min(batch, math.ceil(cfg.bwd_waves * _num_sms(device) / programs_per_row)))


def scan_backward(
    u,
    delta,
    A,
    B,
    C,
    D,
    z,
    delta_bias,
    softplus: bool,
    states,
    grad_out,
    write_y: bool,
    dz_out=None,
    overwrite_inputs: bool = False,
):
    """Gradients ``(du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, y)``; absent inputs give empty tensors.

    ``dz_out``: a (batch, L, E) view with contiguous channels (the z half of a (batch, L, 2E) gradient buffer)
    that dz is written into and returned as, so the caller needs no concatenation.

    ``overwrite_inputs=True`` lets ddelta be written over ``delta`` and y over ``grad_out`` when they are
    contiguous and of the outputs' dtypes (a caller that needs neither afterwards saves two (batch, L, E)
    buffers at its memory peak: the fused mixer's backward under activation checkpointing). It is safe because
    the thread that writes a (step, channel) value is the only one that reads it, and reads it first: the
    backward walks time backwards and reads a step's delta and output gradient before it writes the step's
    gradients; the lambda pass of a split sequence runs, whole, before. With two lanes per channel
    (``bwd_lanes=2``) the other lane reads too, so fresh buffers are used there.

    ``y`` is the forward output recomputed (empty unless ``write_y``): a caller that did not keep it can form
    an output projection's weight gradient from it. Large batches run as several launches of
    :func:`_rows_per_launch` rows each, so that the transient buffers of one launch stay a few hundred MB (they
    would otherwise grow with the batch and cost activation-checkpointed runs their largest batch).
    """
    cfg = _config
    batch, length, dim = u.shape
    n = A.shape[1]
    dev = u.device
    a2t = _a2t(A)
    dummy = a2t
    n_chunks = math.ceil(length / cfg.t_save)
    segments = num_segments(batch, dim, length, dev, training=True)
    seg_len = _segment_length(length, segments, cfg.t_save)
    segments = math.ceil(length / seg_len)
    lpc = cfg.bwd_lanes if n % 2 == 0 else 1  # lanes per channel in the main backward kernel
    n_eb = triton.cdiv(dim, 32 // lpc)
    n_eb_lambda = triton.cdiv(dim, 32)
    grad_out = grad_out if grad_out.stride(-1) == 1 else grad_out.contiguous()
    d_f = D.float().contiguous() if D is not None else dummy
    bias_f = delta_bias.float().contiguous() if delta_bias is not None else dummy
    nv = min(_row_vector_width(n, B.dtype, B.stride(2)), _row_vector_width(n, C.dtype, C.stride(2)))
    nh = n // lpc
    nv_half = min(_row_vector_width(nh, B.dtype, B.stride(2)), _row_vector_width(nh, C.dtype, C.stride(2)))
    flags = dict(HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=bool(softplus))
    du = torch.empty((batch, length, dim), device=dev, dtype=u.dtype)
    overwrite = overwrite_inputs and lpc == 1
    if overwrite and delta.is_contiguous():
        ddelta = delta
    else:
        ddelta = torch.empty((batch, length, dim), device=dev, dtype=delta.dtype)
    if z is None:
        dz = _empty(dev)
    else:
        dz = output_view(dz_out, (batch, length, dim), z.dtype, dev, "scan_backward: dz_out")
    if not write_y:
        y = _empty(dev)
    elif overwrite and grad_out.is_contiguous() and grad_out.dtype == u.dtype:
        y = grad_out
    else:
        y = torch.empty((batch, length, dim), device=dev, dtype=u.dtype)
    dB = torch.empty((batch, length, n), device=dev, dtype=B.dtype)
    dC = torch.empty((batch, length, n), device=dev, dtype=C.dtype)
    da_sum = torch.zeros((n, dim), device=dev, dtype=torch.float32)
    dd_sum = torch.zeros(dim, device=dev, dtype=torch.float32)
    dbias_sum = torch.zeros(dim, device=dev, dtype=torch.float32)
    rows = _rows_per_launch(batch, n_eb * segments, dev)
    db_part = torch.empty((rows, n_eb, length, n), device=dev, dtype=torch.float32)
    dc_part = torch.empty_like(db_part)
    da_part = torch.empty((rows * segments, n, dim), device=dev, dtype=torch.float32)
    dd_part = torch.empty((rows * segments, dim), device=dev, dtype=torch.float32)
    dbias_part = torch.empty_like(dd_part)
    nsub = cfg.t_save // cfg.t_sub
    scratch = (
        torch.empty(rows * n_eb * segments * nsub * nh * 32, device=dev, dtype=torch.float32)
        if nsub > 1
        else dummy
    )
    p = _pow2(nh)
    levels = 6 - lpc  # the lane bits summed over: all 5, or the 4 above the bit that splits a channel
    dup = sum(16 >> level for level in range(min(p.bit_length() - 1, levels), levels))
    for r0 in range(0, batch, rows):
        sl = slice(r0, min(batch, r0 + rows))
        rb = sl.stop - r0
        grid = (rb, n_eb, segments)
        grid_lambda = (rb, n_eb_lambda, segments)
        u_r, delta_r, b_r, c_r, g_r = u[sl], delta[sl], B[sl], C[sl], grad_out[sl]
        z_r = z[sl] if z is not None else u_r
        lamin = dummy
        if segments > 1:
            mu = torch.empty((rb, segments, n, dim), device=dev, dtype=torch.float32)
            dtsum = torch.empty((rb, segments, dim), device=dev, dtype=torch.float32)
            scan_bwd_lambda_kernel[grid_lambda](
                delta_r, a2t, c_r, z_r, bias_f, g_r, mu, dtsum, length, dim, seg_len,
                *delta_r.stride(), *c_r.stride(), *z_r.stride(), *g_r.stride(),
                N=n, BE=32, NV=nv, num_warps=1, **flags, **cfg.device_args(),
            )  # fmt: skip
            lamin = torch.empty_like(mu)
            scan_carry_kernel[(rb, n_eb_lambda)](
                mu, dtsum, a2t, lamin, dim, segments, N=n, BE=32, REVERSE=True, num_warps=1
            )
        du_r = du[sl]
        scan_bwd_kernel[grid](
            u_r, delta_r, a2t, b_r, c_r, d_f, z_r, bias_f, g_r, states[sl], lamin, scratch,
            du_r, ddelta[sl], dz[sl] if z is not None else du_r, y[sl] if write_y else du_r,
            db_part, dc_part, da_part, dd_part, dbias_part,
            length, dim, seg_len, n_chunks,
            *u_r.stride(), *delta_r.stride(), *b_r.stride(), *c_r.stride(), *z_r.stride(), *g_r.stride(),
            *(dz.stride()[:2] if z is not None else (0, 0)),
            N=n, LPC=lpc, P=p, K=max(1, p >> levels), DUP=dup, LEVELS=levels, NV=nv_half,
            T_SAVE=cfg.t_save, T_SUB=cfg.t_sub,
            HAS_D=D is not None, HAS_LAMIN=segments > 1, WRITE_Y=bool(write_y),
            PIPE=bool(cfg.bwd_pipeline) and segments == 1, PF_REREAD=bool(cfg.bwd_prefetch_reread),
            XOR=bool(cfg.bwd_xor_layout) and lpc == 1 and n == 16 and nv_half == 8
            and B.dtype == C.dtype == torch.bfloat16,
            ASM=not interpreting(),
            num_warps=1, **flags,
            **cfg.device_args(),
            **({"maxnreg": cfg.bwd_maxnreg} if cfg.bwd_maxnreg else {}),
        )  # fmt: skip
        dB[sl] = db_part[:rb].sum(1)
        dC[sl] = dc_part[:rb].sum(1)
        da_sum += da_part[: rb * segments].sum(0)
        dd_sum += dd_part[: rb * segments].sum(0)
        dbias_sum += dbias_part[: rb * segments].sum(0)
    dA = da_sum.t().contiguous().to(A.dtype)  # contiguous, as the fake implementation promises
    dD = dd_sum.to(D.dtype) if D is not None else _empty(dev)
    dbias = dbias_sum.to(delta_bias.dtype) if delta_bias is not None else _empty(dev)
    return du, ddelta, dA, dB, dC, dD, dz, dbias, y


# ------------------------------------------------------------------------------------------------ custom ops


@torch.library.custom_op("dimlab::selective_scan_fwd", mutates_args=())
def _scan_fwd_op(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    z: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
    softplus: bool,
    save_states: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    return scan_forward(u, delta, A, B, C, D, z, delta_bias, softplus, save_states)


@_scan_fwd_op.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, softplus, save_states):
    batch, length, dim = u.shape
    out = u.new_empty((batch, length, dim))
    if save_states:
        states = u.new_empty(
            (batch, math.ceil(length / _config.t_save), A.shape[1], dim), dtype=torch.float32
        )
    else:
        states = u.new_empty((0,), dtype=torch.float32)
    return out, states


@torch.library.custom_op("dimlab::selective_scan_bwd", mutates_args=())
def _scan_bwd_op(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    z: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
    softplus: bool,
    states: torch.Tensor,
    grad_out: torch.Tensor,
    write_y: bool,
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
]:
    return scan_backward(u, delta, A, B, C, D, z, delta_bias, softplus, states, grad_out, write_y)


@_scan_bwd_op.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, softplus, states, grad_out, write_y):
    empty = u.new_empty((0,), dtype=torch.float32)
    shape = tuple(u.shape)
    return (
        u.new_empty(shape),
        delta.new_empty(shape),
        A.new_empty(tuple(A.shape)),
        B.new_empty(tuple(B.shape)),
        C.new_empty(tuple(C.shape)),
        D.new_empty(tuple(D.shape)) if D is not None else empty,
        z.new_empty(shape) if z is not None else empty,
        delta_bias.new_empty(tuple(delta_bias.shape)) if delta_bias is not None else empty,
        u.new_empty(shape) if write_y else empty,
    )


def _setup_context(ctx, inputs, output):
    u, delta, A, B, C, D, z, delta_bias, softplus, save_states = inputs
    if not save_states:
        raise RuntimeError("dimlab::selective_scan_fwd was called with save_states=False under autograd")
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, output[1])
    ctx.softplus = softplus


def _backward(ctx, grad_out, _grad_states):
    u, delta, A, B, C, D, z, delta_bias, states = ctx.saved_tensors
    du, ddelta, dA, dB, dC, dD, dz, dbias, _y = _scan_bwd_op(
        u, delta, A, B, C, D, z, delta_bias, ctx.softplus, states, grad_out, False
    )
    return (
        du,
        ddelta,
        dA,
        dB,
        dC,
        dD if D is not None else None,
        dz if z is not None else None,
        dbias if delta_bias is not None else None,
        None,
        None,
    )


torch.library.register_autograd("dimlab::selective_scan_fwd", _backward, setup_context=_setup_context)


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
) -> torch.Tensor:
    """Channel-last selective scan on the Triton kernels; see the module docstring for shapes and maths."""
    check_scan_inputs(u, delta, A, B, C, D, z, delta_bias)
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (u, delta, A, B, C, D, z, delta_bias)
    )
    out, _states = _scan_fwd_op(u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus), needs_grad)
    return out
