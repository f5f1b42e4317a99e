"""The Triton selective scan against the fp64 sequential reference: forward and every gradient.

On CPU the kernels run in Triton's interpreter (tiny shapes); on a GPU the same tests run compiled.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import pytest
import torch
from kernel_cases import DEVICE, rel_err

from dimlab.kernels import scan as kernel_scan
from dimlab.kernels import selective_scan
from dimlab.kernels.reference import selective_scan_ref

NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
TOL = {torch.float32: 2e-5, torch.bfloat16: 2e-2, torch.float16: 4e-3}


def scan_inputs(
    batch, length, dim, n, dtype=torch.float32, with_d=True, with_z=True, with_bias=True, dt_shift=0.0
):
    """Random channel-last inputs on DEVICE; A spread as a trained S4D init (-0.5 .. -20)."""
    g = torch.Generator().manual_seed(1000 * length + 10 * dim + n)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(DEVICE)

    inputs = {
        "u": rand(batch, length, dim).to(dtype),
        "delta": (rand(batch, length, dim, scale=0.5) + dt_shift).to(dtype),
        "A": -torch.exp(torch.empty(dim, n).uniform_(-0.7, 3.0, generator=g)).to(DEVICE),
        "B": rand(batch, length, n).to(dtype),
        "C": rand(batch, length, n).to(dtype),
        "D": rand(dim) if with_d else None,
        "z": rand(batch, length, dim).to(dtype) if with_z else None,
        "delta_bias": rand(dim, scale=0.5) if with_bias else None,
    }
    return {k: (v.requires_grad_() if v is not None else None) for k, v in inputs.items()}


def check_against_reference(inputs, softplus=True, tol=None):
    present = [k for k in NAMES if inputs[k] is not None]
    ref = selective_scan_ref(**inputs, delta_softplus=softplus)
    out = selective_scan(**inputs, delta_softplus=softplus)
    assert out.dtype == inputs["u"].dtype and out.shape == inputs["u"].shape
    tol = tol or TOL[inputs["u"].dtype]
    assert rel_err(out, ref) < tol, "forward"
    grad_out = torch.randn_like(ref)
    ref_grads = torch.autograd.grad(ref, [inputs[k] for k in present], grad_out)
    grads = torch.autograd.grad(out, [inputs[k] for k in present], grad_out.to(out.dtype))
    for name, grad, ref_grad in zip(present, grads, ref_grads, strict=True):
        assert grad.dtype == inputs[name].dtype, name
        assert torch.isfinite(grad).all(), name
        assert rel_err(grad, ref_grad) < tol, name


@pytest.mark.parametrize(
    "batch,length,dim,n",
    [
        (1, 1, 32, 16),  # a single step
        (2, 7, 40, 16),  # L prime and not a multiple of the chunks; channels not a multiple of 32
        (1, 9, 35, 3),  # a small odd state size
    ],
)
def test_scan_matches_reference_fp32(tiny_config, batch, length, dim, n):
    check_against_reference(scan_inputs(batch, length, dim, n))


def test_scan_matches_reference_bf16(tiny_config):
    check_against_reference(scan_inputs(1, 11, 20, 16, dtype=torch.bfloat16))


def test_scan_matches_reference_fp16(tiny_config):
    check_against_reference(scan_inputs(1, 7, 32, 4, dtype=torch.float16))


def test_delta_above_the_softplus_threshold(tiny_config):
    """delta + bias > 20 is passed through unchanged (mamba-ssm's threshold), in forward and backward."""
    inputs = scan_inputs(1, 6, 32, 4, dt_shift=21.0)
    inputs["A"] = (inputs["A"].detach() * 0.01).requires_grad_()  # keep the decays away from underflow
    check_against_reference(inputs)


@pytest.mark.parametrize(
    "with_d,with_z,with_bias,softplus",
    [(False, False, False, True), (True, False, True, False), (False, True, False, True)],
)
def test_optional_inputs(tiny_config, with_d, with_z, with_bias, softplus):
    inputs = scan_inputs(1, 7, 32, 4, with_d=with_d, with_z=with_z, with_bias=with_bias)
    if not softplus:  # dt = delta + bias must be a positive step size
        for name in ("delta", "delta_bias"):
            if inputs[name] is not None:
                inputs[name] = inputs[name].detach().abs().requires_grad_()
    check_against_reference(inputs, softplus=softplus)


def test_split_sequence_matches_reference(tiny_config):
    """Few rows x channels: the sequence is split into segments chained by the carry pass."""
    inputs = scan_inputs(1, 17, 32, 8)
    assert kernel_scan.num_segments(1, 32, 17, inputs["u"].device, training=True) > 1
    check_against_reference(inputs)
    with torch.no_grad():  # inference splits at any step, not only at saved-state boundaries
        assert (
            rel_err(
                selective_scan(**inputs, delta_softplus=True),
                selective_scan_ref(**inputs, delta_softplus=True),
            )
            < 2e-5
        )


def test_default_config_short_sequence():
    """The launch configuration used for real (64-step chunks, 8 states in registers) on a short sequence."""
    check_against_reference(scan_inputs(1, 5, 32, 16))


def test_strided_channel_first_views(tiny_config):
    """Transposed (batch, E, L) tensors and the halves of an (b, L, 2E) projection are read in place."""
    base = scan_inputs(1, 9, 32, 4)
    xz = torch.randn(1, 9, 64, device=DEVICE, requires_grad=True)
    bc = torch.randn(1, 4, 9, device=DEVICE).transpose(1, 2).requires_grad_()
    inputs = dict(base, u=xz[..., :32], z=xz[..., 32:], B=bc)
    assert not inputs["u"].is_contiguous() and not inputs["B"].is_contiguous()
    present = [k for k in NAMES if inputs[k] is not None and inputs[k].is_leaf] + ["xz"]
    leaves = {**inputs, "xz": xz}
    ref = selective_scan_ref(**inputs, delta_softplus=True)
    out = selective_scan(**inputs, delta_softplus=True)
    assert rel_err(out, ref) < 2e-5
    g = torch.randn_like(ref)
    for grad, ref_grad in zip(
        torch.autograd.grad(out, [leaves[k] for k in present], g.float()),
        torch.autograd.grad(ref, [leaves[k] for k in present], g),
        strict=True,
    ):
        assert rel_err(grad, ref_grad) < 2e-5


def test_no_grad_keeps_no_states(tiny_config):
    inputs = {k: (v.detach() if v is not None else None) for k, v in scan_inputs(1, 9, 32, 4).items()}
    out, states = torch.ops.dimlab.selective_scan_fwd(*inputs.values(), True, False)
    assert states.numel() == 0
    assert rel_err(out, selective_scan_ref(**inputs, delta_softplus=True)) < 2e-5


def test_bad_inputs_are_named():
    inputs = {k: (v.detach() if v is not None else None) for k, v in scan_inputs(1, 5, 32, 4).items()}
    with pytest.raises(ValueError, match="complex A is not supported"):
        selective_scan(**dict(inputs, A=inputs["A"].to(torch.complex64)))
    with pytest.raises(ValueError, match="u has dtype torch.float64"):
        selective_scan(**dict(inputs, u=inputs["u"].double()))
    with pytest.raises(ValueError, match=r"B must have shape \(1, 5, 4\)"):
        selective_scan(**dict(inputs, B=inputs["B"][:, :3]))
    with pytest.raises(ValueError, match=r"u must be \(batch, L, d_inner\)"):
        selective_scan(**dict(inputs, u=inputs["u"][0]))


def test_cpu_tensors_need_the_interpreter(monkeypatch):
    inputs = {k: (v.detach().cpu() if v is not None else None) for k, v in scan_inputs(1, 5, 32, 4).items()}
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="need a CUDA device"):
        selective_scan(**inputs)


def test_config_is_validated():
    with pytest.raises(ValueError, match="multiple of t_sub"):
        kernel_scan.ScanConfig(t_save=10, t_sub=4)
    with pytest.raises(ValueError, match="fwd_warps"):
        kernel_scan.ScanConfig(fwd_warps=3)
    with pytest.raises(ValueError, match="bwd_lanes"):
        kernel_scan.ScanConfig(bwd_lanes=4)
    with pytest.raises(ValueError, match="prefetch must be 0 to 32"):
        kernel_scan.ScanConfig(prefetch=-1)
    with pytest.raises(ValueError, match="prefetch_level"):
        kernel_scan.ScanConfig(prefetch_level=3)
    with pytest.raises(ValueError, match="fwd_prefetch must be 0 to 32"):
        kernel_scan.ScanConfig(fwd_prefetch=33)
    with pytest.raises(ValueError, match="bwd_pipeline must be 0 or 1"):
        kernel_scan.ScanConfig(bwd_pipeline=2)
    with pytest.raises(ValueError, match="fast_math must be 0 or 1"):
        kernel_scan.ScanConfig(fast_math=2)


def test_forward_prefetches_only_at_low_occupancy():
    config = kernel_scan.ScanConfig(fwd_prefetch=4, fwd_prefetch_max_warps=24)
    assert config.forward_prefetch(16.0) == 4  # sampling shapes: few warps per SM
    assert config.forward_prefetch(31.0) == 0  # training batches: other warps hide the latency
    assert config.device_args(config.forward_prefetch(16.0))["PF"] == 4


def test_forward_pipelining_mode_follows_occupancy():
    config = kernel_scan.ScanConfig()
    assert config.forward_pipeline(12.0) == config.fwd_pipeline_low == 1  # few warps: all loads early
    assert config.forward_pipeline(31.0) == config.fwd_pipeline == 2  # training batches: u, delta, z only
    with pytest.raises(ValueError, match="fwd_pipeline_low must be 0, 1 or 2"):
        kernel_scan.ScanConfig(fwd_pipeline_low=3)


def test_scan_config_from_text_and_environment():
    assert kernel_scan.parse_scan_config("prefetch=8, bwd_rows=none") == {"prefetch": 8, "bwd_rows": None}
    assert kernel_scan.parse_scan_config("") == {}
    with pytest.raises(ValueError, match=r"^DIMLAB_SCAN_CONFIG: 'prefetch' is not field=value"):
        kernel_scan.parse_scan_config("prefetch")
    with pytest.raises(ValueError, match=r"^src: t_sub='two' is not an integer"):
        kernel_scan.parse_scan_config("t_sub=two", "src")
    code = "from dimlab.kernels.scan import get_scan_config as g; c = g(); print(c.prefetch, c.t_sub)"
    env = {**os.environ, "DIMLAB_SCAN_CONFIG": "prefetch=2,t_sub=4"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["2", "4"]
    env["DIMLAB_SCAN_CONFIG"] = "fwd_warps=3"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert (
        done.returncode != 0
        and "DIMLAB_SCAN_CONFIG: ScanConfig: fwd_warps must be 1, 2, 4 or 8" in done.stderr
    )


def test_inline_assembly_is_left_out_under_the_interpreter():
    """PF_LEVEL 0 (no prefetch hint) and FAST 0 (accurate functions) under the interpreter, which cannot run inline
    assembly; the configured values on a GPU."""
    config = kernel_scan.ScanConfig(prefetch=8, prefetch_level=1, fast_math=1)
    gpu = not kernel_scan.interpreting()
    assert config.device_args() == {"PF": 8, "PF_LEVEL": 1 if gpu else 0, "FAST": 1 if gpu else 0}
    assert kernel_scan.ScanConfig(fast_math=0).device_args()["FAST"] == 0


@pytest.mark.parametrize(
    "batch,length,dim,n,lanes",
    [
        (1, 7, 40, 16, 1),  # a distance longer than the sequence and the chunk
        (2, 17, 16, 4, 1),  # split into segments: forward, lambda pass and backward prefetch within a segment
        (1, 9, 32, 16, 2),
        (2, 17, 16, 4, 0),  # lanes 0 here: one lane, no prefetch and no pipelining: the PF=0, PIPE=0 paths
    ],
)
def test_prefetching_scan_matches_the_reference(tiny_config, batch, length, dim, n, lanes):
    """The prefetch paths (their clamped step indices and addresses) leave every result as it was."""
    steps = 3 if lanes else 0
    pipe = {} if lanes else {"fwd_pipeline": 0, "fwd_pipeline_low": 0, "bwd_pipeline": 0}  # and no pipelining
    config = dataclasses.replace(
        tiny_config,
        prefetch=steps,
        fwd_prefetch=steps,
        fwd_prefetch_max_warps=32,
        bwd_lanes=max(lanes, 1),
        **pipe,
    )
    previous = kernel_scan.set_scan_config(config)
    try:
        check_against_reference(scan_inputs(batch, length, dim, n))
    finally:
        kernel_scan.set_scan_config(previous)


@pytest.mark.parametrize(
    "batch,length,dim,n,lanes,dtype,fwd",
    [
        (1, 7, 40, 16, 1, torch.float32, 1),  # one chunk, the pipelined load of the last step clamped
        (2, 17, 16, 4, 1, torch.float32, 1),  # split into segments (pass 1 pipelines its B loads only)
        (2, 17, 16, 4, 1, torch.float32, 2),  # the forward pipelining u, delta, z only
        (1, 9, 32, 16, 2, torch.bfloat16, 2),  # two lanes per channel: each lane's half of the B tiles
        (1, 1, 32, 3, 1, torch.float32, 1),  # a single step and an odd N
    ],
)
def test_pipelined_loads_match_the_reference(tiny_config, batch, length, dim, n, lanes, dtype, fwd):
    """fwd_pipeline / bwd_pipeline (the next step's inputs loaded one step early) leave every result as it was."""
    config = dataclasses.replace(
        tiny_config, fwd_pipeline=fwd, fwd_pipeline_low=fwd, bwd_pipeline=1, bwd_lanes=lanes
    )
    previous = kernel_scan.set_scan_config(config)
    try:
        check_against_reference(scan_inputs(batch, length, dim, n, dtype=dtype))
    finally:
        kernel_scan.set_scan_config(previous)


def test_backward_writes_dz_into_a_given_half_buffer(tiny_config):
    """scan_backward(dz_out=...) writes dz into the z half of a (B, L, 2E) buffer, batch slices included."""
    inputs = {k: (v.detach() if v is not None else None) for k, v in scan_inputs(3, 9, 32, 4).items()}
    previous = kernel_scan.set_scan_config(dataclasses.replace(tiny_config, bwd_rows=2))
    try:
        _, states = kernel_scan.scan_forward(*(inputs[k] for k in NAMES), True, True)
        grad_out = torch.randn_like(inputs["u"])
        args = (*(inputs[k] for k in NAMES), True, states, grad_out, False)
        buf = torch.zeros(3, 9, 64, device=DEVICE)
        dz = kernel_scan.scan_backward(*args, dz_out=buf[..., 32:])[6]
        ref = kernel_scan.scan_backward(*args)[6]
        assert dz.data_ptr() == buf[..., 32:].data_ptr() and torch.equal(buf[..., 32:], ref)
        assert buf[..., :32].abs().max() == 0
        with pytest.raises(ValueError, match=r"dz_out must be \(3, 9, 32\) torch.float32"):
            kernel_scan.scan_backward(*args, dz_out=buf[..., 32:].to(torch.bfloat16))
    finally:
        kernel_scan.set_scan_config(previous)


def test_backward_in_batch_slices(tiny_config):
    """A batch larger than one launch's rows (bounded buffers) gives the same gradients, split path included."""
    previous = kernel_scan.set_scan_config(dataclasses.replace(tiny_config, bwd_rows=1))
    try:
        check_against_reference(scan_inputs(3, 9, 32, 4))
    finally:
        kernel_scan.set_scan_config(previous)


@pytest.mark.parametrize(
    "batch,length,dim,n,dtype",
    [
        (1, 7, 40, 16, torch.float32),  # channels not a multiple of 16
        (1, 17, 16, 4, torch.float32),  # split into segments
        (1, 9, 24, 16, torch.bfloat16),
        (1, 5, 32, 3, torch.float32),  # odd N: one lane per channel after all
    ],
)
def test_two_lanes_per_channel_backward(tiny_config, batch, length, dim, n, dtype):
    """bwd_lanes=2 (each lane half of a channel's states) gives the reference's gradients too."""
    previous = kernel_scan.set_scan_config(dataclasses.replace(tiny_config, bwd_lanes=2))
    try:
        check_against_reference(scan_inputs(batch, length, dim, n, dtype=dtype))
    finally:
        kernel_scan.set_scan_config(previous)


@pytest.mark.parametrize(
    "batch,length,dim,pipe",
    [
        (2, 17, 40, 1),  # split into segments (the carried adjoint read in the lane order), a partial warp
        (1, 9, 32, 0),  # unsplit, level 1 without pipelining
    ],
)
def test_xor_lane_layout_gives_the_plain_layouts_gradients(tiny_config, batch, length, dim, pipe):
    """bwd_xor_layout (N = 16, bf16 B / C: a lane's states in a lane-dependent order, the dB / dC reduce-scatter
    without most selects) gives the plain layout's gradients up to fp32 summation order and the bf16 outputs'
    rounding; a wrong pairing of states would be off by O(1)."""
    inputs = {
        k: (v.detach() if v is not None else None) for k, v in scan_inputs(batch, length, dim, 16).items()
    }
    for name in ("u", "delta", "B", "C", "z"):
        inputs[name] = inputs[name].to(torch.bfloat16)
    grads = []
    for xor in (1, 0):
        config = dataclasses.replace(tiny_config, bwd_xor_layout=xor, bwd_pipeline=pipe)
        previous = kernel_scan.set_scan_config(config)
        try:
            _, states = kernel_scan.scan_forward(*(inputs[k] for k in NAMES), True, True)
            seed = torch.Generator().manual_seed(7)
            grad_out = torch.randn(inputs["u"].shape, generator=seed).to(inputs["u"])
            grads.append(kernel_scan.scan_backward(*(inputs[k] for k in NAMES), True, states, grad_out, True))
        finally:
            kernel_scan.set_scan_config(previous)
    names = ("du", "ddelta", "dA", "dB", "dC", "dD", "dz", "ddelta_bias", "y")
    for name, xor_grad, plain_grad in zip(names, *grads, strict=True):
        assert rel_err(xor_grad, plain_grad) < 2e-3, name


@pytest.mark.parametrize(
    "batch,length,dim,lanes,rows",
    [
        (1, 9, 32, 1, None),  # split into segments (the lambda pass reads delta and the gradient first)
        (2, 8, 32, 1, 1),  # batch slices
        (1, 3, 32, 2, None),  # two lanes per channel: fresh buffers instead
    ],
)
def test_overwriting_delta_and_the_output_gradient_gives_the_same_gradients(
    tiny_config, batch, length, dim, lanes, rows
):
    """overwrite_inputs=True (the fused mixer's backward) writes ddelta over delta and y over the output gradient:
    the same values as into fresh buffers, so every value was read before its thread overwrote it."""
    inputs = {
        k: (v.detach() if v is not None else None) for k, v in scan_inputs(batch, length, dim, 16).items()
    }
    config = dataclasses.replace(tiny_config, bwd_lanes=lanes, bwd_rows=rows)
    previous = kernel_scan.set_scan_config(config)
    try:
        _, states = kernel_scan.scan_forward(*(inputs[k] for k in NAMES), True, True)
        grad_out = torch.randn_like(inputs["u"])
        args = [inputs[k] for k in NAMES]
        ref = kernel_scan.scan_backward(*args, True, states, grad_out, True)
        delta, grad = inputs["delta"].clone(), grad_out.clone()
        args[1] = delta
        got = kernel_scan.scan_backward(*args, True, states, grad, True, overwrite_inputs=True)
    finally:
        kernel_scan.set_scan_config(previous)
    names = ("du", "ddelta", "dA", "dB", "dC", "dD", "dz", "ddelta_bias", "y")
    for name, a, b in zip(names, got, ref, strict=True):
        assert torch.equal(a, b), name
    aliased = lanes == 1
    assert (got[1].data_ptr() == delta.data_ptr()) == aliased
    assert (got[8].data_ptr() == grad.data_ptr()) == aliased
