"""The optimizer-step tail (dimlab.lit.optim_step): one gradient norm per step serving the guard, the log and
clipping; clipping by it equals ``clip_grad_norm_``; AdamW runs fused where that is safe."""

from __future__ import annotations

import types

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from dimlab.lit.faults import NonFiniteGuard
from dimlab.lit.module import DiffusionModule
from dimlab.lit.optim_step import StepGradNorm, clip_to_norm, optimizer_gradients, use_fused_adamw
from tiny_models import tiny_dim, tiny_trainer


def _model_with_grads(seed: int = 0) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.GELU(), torch.nn.Linear(16, 3))
    model[0].bias.requires_grad_(False)  # a parameter without a gradient is left out
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    (model(torch.randn(8, 6)) ** 2).sum().mul(50.0).backward()
    return model, opt


def test_the_norm_is_computed_once_until_invalidated(monkeypatch):
    model, opt = _model_with_grads()
    calls = []
    real = torch.nn.utils.get_total_norm
    monkeypatch.setattr(torch.nn.utils, "get_total_norm", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    cache = StepGradNorm()
    first = cache.get(opt)
    assert cache.get(opt) is first and len(calls) == 1
    expected = torch.linalg.vector_norm(torch.stack([g.norm() for g in optimizer_gradients(opt)]))
    torch.testing.assert_close(first, expected)
    for p in model.parameters():
        if p.grad is not None:
            p.grad.mul_(2.0)
    cache.invalidate()
    torch.testing.assert_close(cache.get(opt), 2 * expected)
    assert len(calls) == 2


def test_no_gradients_give_no_norm_and_clipping_does_nothing():
    model = torch.nn.Linear(3, 3)
    opt = torch.optim.AdamW(model.parameters())
    assert StepGradNorm().get(opt) is None
    clip_to_norm(opt, 1.0, None)
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("max_norm", [0.5, 1e6])
def test_clipping_by_the_shared_norm_equals_clip_grad_norm(max_norm):
    ours, opt = _model_with_grads()
    theirs, _ = _model_with_grads()
    clip_to_norm(opt, max_norm, StepGradNorm().get(opt))
    torch.nn.utils.clip_grad_norm_([p for p in theirs.parameters() if p.requires_grad], max_norm)
    for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
        assert (a.grad is None and b.grad is None) or torch.equal(a.grad, b.grad)


def _fake_trainer(scaler=None, algorithm=None, clip=1.0):
    return types.SimpleNamespace(
        precision_plugin=types.SimpleNamespace(scaler=scaler),
        gradient_clip_algorithm=algorithm,
        gradient_clip_val=clip,
    )


def test_fused_adamw_only_on_cuda_and_where_lightning_allows_it():
    cpu = [torch.nn.Parameter(torch.zeros(2))]
    assert not use_fused_adamw(cpu) and not use_fused_adamw([])
    meta = [torch.nn.Parameter(torch.zeros(2, device="meta"))]
    assert not use_fused_adamw(meta, _fake_trainer())
    # the rules past the device check, with a stand-in for CUDA parameters
    cuda = [types.SimpleNamespace(is_cuda=True, is_floating_point=lambda: True)]
    assert use_fused_adamw(cuda) and use_fused_adamw(cuda, _fake_trainer())
    assert use_fused_adamw(cuda, _fake_trainer(algorithm="norm"))
    assert not use_fused_adamw(cuda, _fake_trainer(scaler=object()))  # 16-mixed: the scaler unscales
    assert not use_fused_adamw(cuda, _fake_trainer(algorithm="value"))  # Lightning refuses to clip fused
    assert use_fused_adamw(cuda, _fake_trainer(algorithm="value", clip=None))


def test_the_module_configures_multi_tensor_adamw_on_the_cpu():
    module = DiffusionModule(tiny_dim(), schedule="vp_sde")
    opt = module.configure_optimizers()["optimizer"]
    assert not opt.defaults["fused"]


class _Blobs(Dataset):
    def __init__(self, n: int = 16):
        g = torch.Generator().manual_seed(0)
        self.x, self.y = (0.5 * torch.randn(n, 1, 8, 8, generator=g)).clamp(-1, 1), torch.arange(n) % 4

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {"x": self.x[i], "y": self.y[i]}


def _norm(grads) -> float:
    return torch.linalg.vector_norm(torch.cat([g.flatten() for g in grads])).item()


class _NormProbe(L.Callback):
    """The logged grad norm of every step, against the norm of the gradients before clipping."""

    def __init__(self):
        self.logged, self.before_clip, self.after_clip = [], [], []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):  # runs before the module's own hook
        grads = optimizer_gradients(optimizer)
        self.before_clip.append(_norm(grads))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.logged.append(float(trainer.callback_metrics["train/grad_norm"]))


def test_one_norm_serves_guard_log_and_clipping_in_a_fit(tmp_path, monkeypatch):
    calls = []
    real = torch.nn.utils.get_total_norm
    monkeypatch.setattr(torch.nn.utils, "get_total_norm", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    norm_again = []  # a norm computed a second way: per tensor (the old log) or inside clip_grad_norm_
    monkeypatch.setattr(
        torch.nn.utils, "clip_grad_norm_", lambda *a, **k: norm_again.append("clip_grad_norm_")
    )
    real_tensor_norm = torch.Tensor.norm
    monkeypatch.setattr(
        torch.Tensor, "norm", lambda *a, **k: (norm_again.append("Tensor.norm"), real_tensor_norm(*a, **k))[1]
    )
    torch.manual_seed(0)
    module = DiffusionModule(tiny_dim(), schedule="vp_sde", lr=1e-3, warmup_steps=0)
    probe = _NormProbe()
    clipped = []
    original = module.configure_gradient_clipping

    def spy(optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        original(optimizer, gradient_clip_val, gradient_clip_algorithm)
        grads = optimizer_gradients(optimizer)
        clipped.append(_norm(grads))

    monkeypatch.setattr(module, "configure_gradient_clipping", spy)
    trainer = tiny_trainer(tmp_path, max_steps=3, gradient_clip_val=1e-3, callbacks=[NonFiniteGuard(), probe])
    trainer.fit(module, DataLoader(_Blobs(), batch_size=4))
    # one norm per step, although the guard, the log and the clipping all use it
    assert len(calls) == 3 and norm_again == []
    assert probe.logged == pytest.approx(probe.before_clip, rel=1e-5)
    assert all(b > 1e-3 for b in probe.before_clip)
    assert clipped == pytest.approx([1e-3] * 3, rel=1e-4)


@pytest.mark.gpu
def test_fused_adamw_and_the_multi_tensor_ema_on_cuda():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    module = DiffusionModule(tiny_dim(), schedule="vp_sde").cuda()
    assert module.configure_optimizers()["optimizer"].defaults["fused"]
    source = torch.nn.Linear(64, 64).cuda()
    ema_loop, ema_foreach = type(module.ema)(source, 0.9), type(module.ema)(source, 0.9)
    with torch.no_grad():
        source.weight.add_(1.0)
    for target, value in zip(
        ema_loop.module.state_dict().values(), source.state_dict().values(), strict=True
    ):
        target.lerp_(value, 0.1)
    ema_foreach.update(source)
    for a, b in zip(
        ema_loop.module.state_dict().values(), ema_foreach.module.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)
