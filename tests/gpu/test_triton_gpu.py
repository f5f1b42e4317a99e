"""dimlab's Triton kernels on a GPU at DiM's real shapes: against the torch scan and mamba-ssm, and in training.

Needs a CUDA device (and, for the mamba-ssm comparisons, its kernels); skipped cleanly otherwise. The CPU suite
checks the same kernels in Triton's interpreter on tiny shapes (tests/kernels).
"""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import pytest
import torch
from gpu_numerics import forward_backward, rel_err

from dimlab.models.mamba import Mamba, set_scan_backend
from dimlab.models.presets import build_backbone
from dimlab.models.scan import kernels_available, selective_scan

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
needs_mamba = pytest.mark.skipif(
    not (torch.cuda.is_available() and kernels_available()),
    reason="needs mamba-ssm's kernels for the comparison",
)

D_MODELS = [512, 1024, 1536]  # DiM-S / L / H
LENGTHS = [366, 1230]  # 256 px and 512 px token sequences
FP32_TOL = 1e-4
BF16_TOL = 1e-2


def scan_inputs(batch, dim, n, length, dtype, seed=0):
    """Channel-first scan inputs shaped like a Mamba mixer's (S4D-init A, a fresh dt_proj bias)."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    dev = "cuda"

    def rand(*shape, scale=1.0):
        return torch.randn(*shape, device=dev, generator=g) * scale

    inputs = {
        "u": rand(batch, dim, length).to(dtype),
        "delta": rand(batch, dim, length, scale=0.5).to(dtype),
        "A": -torch.arange(1, n + 1, device=dev, dtype=torch.float32).repeat(dim, 1)
        * torch.exp(rand(dim, 1, scale=0.3)),
        "B": rand(batch, n, length).to(dtype),
        "C": rand(batch, n, length).to(dtype),
        "D": rand(dim),
        "z": rand(batch, dim, length).to(dtype),
        "delta_bias": torch.log(torch.expm1(torch.empty(dim, device=dev).uniform_(1e-3, 0.1, generator=g))),
    }
    return {k: v.requires_grad_() for k, v in inputs.items()}


def scan_and_grads(inputs, backend, grad_out):
    out = selective_scan(**inputs, delta_softplus=True, backend=backend)
    grads = torch.autograd.grad(out, list(inputs.values()), grad_out)
    return out, dict(zip(inputs, grads, strict=True))


@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("d_model", D_MODELS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_triton_scan_matches_torch_scan(d_model, length, dtype):
    inputs = scan_inputs(2, 2 * d_model, 16, length, dtype)
    grad_out = torch.randn_like(inputs["u"])
    out_t, grads_t = scan_and_grads(inputs, "triton", grad_out)
    out_r, grads_r = scan_and_grads(inputs, "torch", grad_out)
    tol = FP32_TOL if dtype == torch.float32 else BF16_TOL
    assert out_t.dtype == dtype
    assert rel_err(out_t, out_r) < tol
    for name in inputs:
        assert rel_err(grads_t[name], grads_r[name]) < (tol if dtype == torch.float32 else 3 * tol), name


@needs_mamba
@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("d_model", D_MODELS)
def test_triton_scan_matches_mamba_ssm(d_model, length):
    inputs = scan_inputs(2, 2 * d_model, 16, length, torch.float32, seed=1)
    grad_out = torch.randn_like(inputs["u"])
    out_t, grads_t = scan_and_grads(inputs, "triton", grad_out)
    out_c, grads_c = scan_and_grads(inputs, "cuda", grad_out)
    assert rel_err(out_t, out_c) < FP32_TOL
    for name in inputs:
        assert rel_err(grads_t[name], grads_c[name]) < FP32_TOL, name


@pytest.mark.parametrize("batch", [1, 2])
def test_triton_scan_at_a_sampling_shape(batch):
    """DiM-H/2 at 1024 px with CFG: few rows, a long sequence, so the kernels split it into segments."""
    inputs = scan_inputs(batch, 3072, 16, 4494, torch.bfloat16, seed=2)
    grad_out = torch.randn_like(inputs["u"])
    with torch.no_grad():
        fwd_t = selective_scan(**inputs, delta_softplus=True, backend="triton")
        fwd_r = selective_scan(**inputs, delta_softplus=True, backend="torch")
    assert rel_err(fwd_t, fwd_r) < BF16_TOL
    out_t, grads_t = scan_and_grads(inputs, "triton", grad_out)
    out_r, grads_r = scan_and_grads(inputs, "torch", grad_out)
    assert rel_err(out_t, out_r) < BF16_TOL
    for name in inputs:
        assert rel_err(grads_t[name], grads_r[name]) < 3 * BF16_TOL, name


@pytest.mark.parametrize("d_model", D_MODELS)
@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
def test_triton_mixer_matches_torch_mixer(d_model, autocast):
    torch.manual_seed(d_model)
    mixer = Mamba(d_model, d_state=16, d_conv=3, expand=2, device="cuda")
    x = torch.randn(2, 366, d_model, device="cuda", requires_grad=True)
    grad_out = torch.randn(2, 366, d_model, device="cuda")
    results = {}
    for backend in ("triton", "torch"):
        set_scan_backend(mixer, backend)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            y = mixer(x)
        grads = torch.autograd.grad(y, [x, *mixer.parameters()], grad_out.to(y.dtype))
        results[backend] = (y, grads)
    tol = BF16_TOL if autocast else FP32_TOL
    assert rel_err(results["triton"][0], results["torch"][0]) < tol
    for grad_t, grad_r in zip(results["triton"][1], results["torch"][1], strict=True):
        assert rel_err(grad_t, grad_r) < (3 * tol if autocast else tol)


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
def test_full_dim_s2_triton_matches_torch(autocast):
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = build_backbone("dim_s2")
    with torch.no_grad():
        model.pos_embed.normal_(std=0.02)
    truth_out, truth_grads = forward_backward(model, "torch", autocast=False)
    out, grads = forward_backward(model, "triton", autocast=autocast)
    flat = torch.cat([grads[n].flatten() for n in truth_grads])
    flat_truth = torch.cat([truth_grads[n].flatten() for n in truth_grads])
    if autocast:  # bf16 activations through 25 blocks: judged against the fp32 pass, as the cuda backend is
        assert rel_err(out, truth_out) < 5e-2 and rel_err(flat, flat_truth) < 1e-1
    else:
        assert rel_err(out, truth_out) < 1e-3
        bad = {n: rel_err(grads[n], truth_grads[n]) for n in truth_grads}
        assert not {n: e for n, e in bad.items() if e > 1e-3}, bad


def _fit_losses(tmp_path: Path, backend: str, shards: Path) -> list[float]:
    """Per-step training losses of a short bf16 `dimlab fit` of a DiM on the digits with scan ``backend``."""
    from dimlab.cli import main as dimlab_main

    root = tmp_path / backend
    overrides = [
        "--trainer.accelerator=gpu",
        "--trainer.precision=bf16-mixed",
        "--trainer.max_steps=60",
        "--trainer.log_every_n_steps=1",
        "--trainer.val_check_interval=1000",
        f"--trainer.default_root_dir={root}",
        "--trainer.logger=lightning.pytorch.loggers.CSVLogger",
        f"--trainer.logger.save_dir={root}",
        f"--data.train_shards={shards}",
        f"--data.val_shards={shards}",
        "--data.resolution=16",
        "--model.backbone.init_args.input_size=16",
        "--model.backbone.init_args.hidden_size=256",
        "--model.backbone.init_args.depth=9",
        "--model.backbone.init_args.d_state=16",
        f"--model.backbone.init_args.scan_backend={backend}",
    ]
    dimlab_main(["fit", "--config", "experiments/demo/digits.yaml", *overrides])
    (metrics,) = root.rglob("metrics.csv")
    with metrics.open() as f:
        return [float(row["train/loss"]) for row in csv.DictReader(f) if row.get("train/loss")]


@needs_mamba
def test_bf16_fit_loss_curve_triton_matches_mamba_ssm(tmp_path, monkeypatch):
    """Same seed, same data: the Triton and mamba-ssm backends train to the same loss curve within noise."""
    from dimlab.data.digits import write_digits_shards

    if importlib.util.find_spec("sklearn") is None:
        pytest.skip("scikit-learn provides the digits")
    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    shards = tmp_path / "digits"
    write_digits_shards(shards, size=16)
    curves = {backend: torch.tensor(_fit_losses(tmp_path, backend, shards)) for backend in ("triton", "cuda")}
    triton, cuda = curves["triton"], curves["cuda"]
    assert len(triton) == len(cuda) == 60 and torch.isfinite(triton).all()
    # identical first steps up to kernel rounding, then the curves drift apart only as noise: two runs of the
    # mamba-ssm backend itself (atomics in its backward) ended 4.3% apart in their last-20 means on an H200
    # (benchmarks/RESULTS.md, call 13), two Triton runs 0.3%; a wrong gradient shows in the first steps
    assert (triton[:5] - cuda[:5]).abs().max() < 0.02 * cuda[:5].mean()
    assert abs(triton[-20:].mean() - cuda[-20:].mean()) < 0.10 * cuda[-20:].mean()
    assert triton[-20:].mean() < 0.8 * triton[:5].mean(), "the loss did not fall"
