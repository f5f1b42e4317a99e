"""The Mamba mixer: mamba-ssm-compatible parameters and init, forward maths, backend switching."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dimlab.models.mamba import Mamba, set_scan_backend


def test_state_dict_matches_official_dim_s_block(shared_spec):
    """Names and shapes equal one DiM-S block's `attn1.*` entries (the official mamba-ssm Mamba)."""
    shapes = json.loads((shared_spec / "official-state-dict-shapes.json").read_text())["cifar10_S_DiM"]
    prefix = "transformer_blocks.0.attn1."
    official = {k[len(prefix) :]: v for k, v in shapes.items() if k.startswith(prefix)}
    assert official, f"no {prefix}* entries in the shapes file"
    ours = {k: list(v.shape) for k, v in Mamba(512, d_state=16, d_conv=3, expand=2).state_dict().items()}
    assert ours == official


def test_official_state_dict_loads_both_ways():
    """A state dict with mamba-ssm's names loads strictly, and ours round-trips into a fresh module."""
    source = Mamba(16, d_state=4, d_conv=3)
    target = Mamba(16, d_state=4, d_conv=3)
    target.load_state_dict(source.state_dict(), strict=True)
    for name, tensor in source.state_dict().items():
        assert torch.equal(target.state_dict()[name], tensor), name


def test_parameter_count_matches_reference_formula():
    """docs/backbone.md "Presets": a mixer has 6D^2 + 4DR + 108D parameters (d_state 16, d_conv 3, expand 2)."""
    for d in (512, 1024):
        r = math.ceil(d / 16)
        assert sum(p.numel() for p in Mamba(d, d_conv=3).parameters()) == 6 * d * d + 4 * d * r + 108 * d


def test_init_statistics():
    d_model, d_state, dt_min, dt_max = 64, 16, 1e-3, 0.1
    m = Mamba(d_model, d_state=d_state, d_conv=3, dt_min=dt_min, dt_max=dt_max)
    expected_a_log = torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).expand(m.d_inner, -1)
    assert torch.equal(m.A_log.detach(), expected_a_log)
    assert m.A_log.dtype == torch.float32 and m.D.dtype == torch.float32
    assert torch.equal(m.D.detach(), torch.ones(m.d_inner))
    assert m.A_log._no_weight_decay and m.D._no_weight_decay
    assert m.dt_proj.bias._no_reinit
    dt = F.softplus(m.dt_proj.bias.detach())
    assert dt.min() >= dt_min * (1 - 1e-5) and dt.max() <= dt_max * (1 + 1e-5)
    # log-uniform: log dt spreads over most of [log dt_min, log dt_max]
    log_dt = dt.log()
    span = math.log(dt_max) - math.log(dt_min)
    assert log_dt.max() - log_dt.min() > 0.8 * span
    bound = m.dt_rank**-0.5
    w = m.dt_proj.weight.detach()
    assert w.abs().max() <= bound and w.abs().max() > 0.8 * bound
    assert m.dt_rank == math.ceil(d_model / 16)
    assert m.in_proj.bias is None and m.out_proj.bias is None and m.x_proj.bias is None
    assert m.conv1d.bias is not None and m.conv1d.groups == m.d_inner


def test_dt_init_floor_and_constant():
    m = Mamba(32, dt_min=1e-6, dt_max=2e-6, dt_init_floor=1e-3, dt_init="constant", dt_scale=2.0)
    assert torch.allclose(F.softplus(m.dt_proj.bias.detach()), torch.full((m.d_inner,), 1e-3), rtol=1e-4)
    assert torch.allclose(m.dt_proj.weight.detach(), torch.full_like(m.dt_proj.weight, 2.0 * m.dt_rank**-0.5))


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="dt_init"):
        Mamba(8, dt_init="uniform")
    with pytest.raises(ValueError, match="scan_backend"):
        Mamba(8, scan_backend="mamba2")
    with pytest.raises(ValueError, match=r"expected input \(batch, L, 8\)"):
        Mamba(8)(torch.randn(2, 5, 7))


def mamba_by_hand(m: Mamba, x: torch.Tensor) -> torch.Tensor:
    """The Mamba v1 equations written out with loops, in float64: the test's own derivation."""
    x = x.double()
    p = {k: v.detach().double() for k, v in m.state_dict().items()}
    batch, length, _ = x.shape
    e, n, r, k = m.d_inner, m.d_state, m.dt_rank, m.d_conv
    out = torch.zeros(batch, length, m.d_model, dtype=torch.float64)
    for b in range(batch):
        xz = x[b] @ p["in_proj.weight"].T  # (L, 2E)
        xs, zs = xz[:, :e], xz[:, e:]
        # causal depthwise conv: position t sees inputs t-k+1 .. t, weight tap k-1 on the newest
        conv = torch.zeros(length, e, dtype=torch.float64)
        for t in range(length):
            acc = p["conv1d.bias"].clone()
            for j in range(k):
                src = t - (k - 1) + j
                if src >= 0:
                    acc = acc + p["conv1d.weight"][:, 0, j] * xs[src]
            conv[t] = acc
        xc = conv * torch.sigmoid(conv)
        proj = xc @ p["x_proj.weight"].T
        dt = F.softplus(proj[:, :r] @ p["dt_proj.weight"].T + p["dt_proj.bias"])  # (L, E)
        Bm, Cm = proj[:, r : r + n], proj[:, r + n :]
        A = -torch.exp(p["A_log"])
        h = torch.zeros(e, n, dtype=torch.float64)
        ys = torch.zeros(length, e, dtype=torch.float64)
        for t in range(length):
            h = torch.exp(dt[t][:, None] * A) * h + (dt[t] * xc[t])[:, None] * Bm[t][None, :]
            ys[t] = (h * Cm[t][None, :]).sum(-1) + p["D"] * xc[t]
        ys = ys * zs * torch.sigmoid(zs)
        out[b] = ys @ p["out_proj.weight"].T
    return out


@pytest.mark.parametrize("backend", ["torch", "reference", "auto"])
def test_forward_matches_hand_derivation(backend):
    m = Mamba(8, d_state=4, d_conv=3, scan_backend=backend).double()
    with torch.no_grad():  # make D and A non-trivial so that every term is exercised
        m.D.uniform_(-1, 1)
        m.A_log.add_(torch.randn_like(m.A_log) * 0.3)
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    y = m(x)
    assert y.shape == (2, 5, 8)
    assert torch.allclose(y, mamba_by_hand(m, x), rtol=1e-9, atol=1e-12)


def test_is_causal():
    m = Mamba(8, d_state=4, d_conv=3).double()
    x = torch.randn(1, 9, 8, dtype=torch.float64)
    x2 = x.clone()
    x2[:, 6:] = torch.randn(1, 3, 8, dtype=torch.float64)
    assert torch.allclose(m(x)[:, :6], m(x2)[:, :6], rtol=1e-12)
    assert not torch.allclose(m(x)[:, 6:], m(x2)[:, 6:])


def test_torch_and_reference_backends_agree_with_gradients():
    m = Mamba(16, d_state=8, d_conv=3)
    x = torch.randn(2, 23, 16, requires_grad=True)
    outs, grads = {}, {}
    for backend in ("torch", "reference"):
        set_scan_backend(m, backend)
        m.zero_grad()
        y = m(x)
        (gx,) = torch.autograd.grad((y * torch.linspace(-1, 1, 16)).sum(), x, retain_graph=True)
        y.square().mean().backward()
        outs[backend] = y.detach()
        grads[backend] = {"x": gx, **{k: p.grad.clone() for k, p in m.named_parameters()}}
    assert torch.allclose(outs["torch"], outs["reference"], rtol=1e-5, atol=1e-6)
    for name, ref in grads["reference"].items():
        assert torch.allclose(grads["torch"][name], ref, rtol=1e-4, atol=1e-6), name


def test_set_scan_backend_walks_the_model():
    model = nn.Sequential(Mamba(8), nn.Linear(8, 8), nn.Sequential(Mamba(8, scan_backend="reference")))
    assert set_scan_backend(model, "torch") == 2
    assert all(m.scan_backend == "torch" for m in model.modules() if isinstance(m, Mamba))
    with pytest.raises(ValueError, match="must be one of"):
        set_scan_backend(model, "fast")
    model[0].scan_backend = "reference"
    assert model[0].scan_backend == "reference"


def test_autocast_bf16_on_cpu():
    m = Mamba(16, d_state=8, d_conv=3, scan_backend="torch")
    x = torch.randn(2, 11, 16, requires_grad=True)
    ref = m(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(x)
    assert y.dtype == torch.bfloat16
    assert torch.isfinite(y).all()
    assert ((y.float() - ref).norm() / ref.norm()).item() < 5e-2
    y.float().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())


def test_bf16_weights():
    m = Mamba(16, d_state=8, d_conv=3, dtype=torch.bfloat16)
    assert m.in_proj.weight.dtype == torch.bfloat16 and m.A_log.dtype == torch.float32
    y = m(torch.randn(1, 7, 16, dtype=torch.bfloat16))
    assert y.dtype == torch.bfloat16 and torch.isfinite(y).all()


def test_import_does_not_pull_in_mamba_ssm():
    code = (
        "import sys, torch; import dimlab.models.mamba as m; "
        "m.Mamba(8)(torch.randn(1, 3, 8)); "
        "bad = [k for k in sys.modules if k.split('.')[0] in ('mamba_ssm', 'causal_conv1d', 'selective_scan_cuda')]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
