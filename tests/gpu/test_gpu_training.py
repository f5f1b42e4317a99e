"""DiM-S/2 on a GPU with the mamba-ssm kernels: backend parity in the full network, and real bf16 training steps.

Needs a CUDA device and the kernels (`make kernels`); skipped cleanly otherwise.
"""

from __future__ import annotations

import lightning as L
import pytest
import torch
from gpu_numerics import forward_backward, rel_err
from torch.utils.data import DataLoader, Dataset

from dimlab.lit.module import DiffusionModule
from dimlab.models.presets import build_backbone

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.cuda_kernels,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

FP32_TOL = 1e-3  # 25 blocks of summation-order differences between the kernels and the torch scan
BF16_ABS_TOL = 5e-2  # bf16 has ~3 significant digits; errors compound over 25 blocks


@pytest.fixture(scope="module")
def dim_s2():
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = build_backbone("dim_s2")
    # The released init has zero position table; make it non-trivial so the test sees its gradient path too.
    with torch.no_grad():
        model.pos_embed.normal_(std=0.02)
    return model


def test_full_dim_s2_cuda_matches_torch_backend_fp32(dim_s2):
    out_cuda, grads_cuda = forward_backward(dim_s2, "cuda", autocast=False)
    out_torch, grads_torch = forward_backward(dim_s2, "torch", autocast=False)
    assert rel_err(out_cuda, out_torch) < FP32_TOL
    assert grads_cuda.keys() == grads_torch.keys()
    assert len(grads_cuda) == len(list(dim_s2.parameters()))
    bad = {n: rel_err(grads_cuda[n], grads_torch[n]) for n in grads_torch}
    bad = {n: e for n, e in bad.items() if e > FP32_TOL}
    assert not bad, f"gradients differ beyond {FP32_TOL}: {bad}"


def test_full_dim_s2_cuda_matches_torch_backend_bf16(dim_s2):
    # Ground truth: the fp32 torch-scan pass. Each bf16 backend must be close to it, and the kernels must not be
    # markedly less accurate than the torch scan under the same autocast.
    truth_out, truth_grads = forward_backward(dim_s2, "torch", autocast=False)
    results = {b: forward_backward(dim_s2, b, autocast=True) for b in ("cuda", "torch")}
    names = list(truth_grads)
    flat_truth = torch.cat([truth_grads[n].flatten() for n in names])
    errors = {}
    for backend, (out, grads) in results.items():
        flat = torch.cat([grads[n].flatten() for n in names])
        errors[backend] = (rel_err(out, truth_out), rel_err(flat, flat_truth))
    cuda_out, cuda_grad = errors["cuda"]
    torch_out, torch_grad = errors["torch"]
    assert cuda_out < BF16_ABS_TOL and cuda_grad < 2 * BF16_ABS_TOL, errors
    assert cuda_out <= 2 * torch_out + 1e-3, errors
    assert cuda_grad <= 2 * torch_grad + 1e-3, errors
    assert rel_err(results["cuda"][0], results["torch"][0]) < BF16_ABS_TOL


class RepeatedBatches(Dataset):
    """The same few GPU-resident batches over and over, so the loss can fall by memorisation."""

    def __init__(self, images: torch.Tensor, batch_size: int, length: int):
        self.images, self.batch_size, self.length = images, batch_size, length

    def __len__(self):
        return self.length

    def __getitem__(self, index):
        start = (index * self.batch_size) % self.images.shape[0]
        x = self.images[start : start + self.batch_size]
        return {"x": x, "y": torch.zeros(x.shape[0], dtype=torch.long, device=x.device)}


class LossRecorder(L.Callback):
    """Collects the training loss of every step."""

    def __init__(self):
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


def test_dim_s2_bf16_training_steps_reduce_loss(tmp_path):
    torch.manual_seed(0)
    with torch.device("cuda"):
        backbone = build_backbone("dim_s2", scan_backend="cuda")
    module = DiffusionModule(
        backbone, schedule="vp_sde", class_conditional=False, lr=5e-4, betas=(0.9, 0.99), warmup_steps=0
    )
    g = torch.Generator(device="cuda").manual_seed(0)
    images = torch.rand(16, 3, 32, 32, device="cuda", generator=g) * 2 - 1
    steps = 60
    loader = DataLoader(RepeatedBatches(images, batch_size=16, length=steps), batch_size=None)
    recorder = LossRecorder()
    ema_before = module.ema.module.final_proj.weight.detach().clone()
    trainer = L.Trainer(
        accelerator="gpu",
        devices=1,
        precision="bf16-mixed",
        max_steps=steps,
        gradient_clip_val=1.0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        default_root_dir=str(tmp_path),
        callbacks=[recorder],
    )
    trainer.fit(module, train_dataloaders=loader)
    losses = torch.tensor(recorder.losses)
    assert len(losses) == steps and torch.isfinite(losses).all()
    first, last = losses[:10].mean().item(), losses[-10:].mean().item()
    assert last < 0.7 * first, f"loss did not fall: first 10 {first:.3f}, last 10 {last:.3f}"
    # Lightning moves the module back to the CPU after fit.
    assert not torch.equal(module.ema.module.final_proj.weight.cpu(), ema_before.cpu()), "EMA did not advance"
    assert all(p.dtype == torch.float32 for p in module.backbone.parameters()), (
        "bf16-mixed keeps fp32 weights"
    )
