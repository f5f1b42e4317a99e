"""FSDP (experiments/overlays/fsdp.yaml): DiM blocks are FSDP units, the EMA stays whole and outside FSDP, gradient
clipping uses FSDP's all-shard norm, and full checkpoints resume under FSDP and load without it.

Stock Lightning will not run FSDP on a CPU-only machine (it refuses ``FSDPStrategy`` with ``accelerator=cpu``, and
hands torch's FSDP ``device_id=None``, which FSDP rejects without an accelerator). The CPU tests therefore use
``reliability_ddp_probe.CPUFSDPStrategy``, the same strategy with FSDP placed on the CPU explicitly (gloo); the
``gpu`` tests run the unmodified strategy (1 GPU in-process, 2 GPUs through ``dimlab fit``).
"""

from __future__ import annotations

from types import SimpleNamespace

import lightning as L
import pytest
import torch
import yaml
from lightning.pytorch.strategies import FSDPStrategy
from reliability_cli import REPO, dimlab_fit, load_checkpoint
from torch.utils.data import DataLoader

from dimlab.lit.module import DiffusionModule
from dimlab.models.dim import DiMBlock
from tiny_models import TinyImages, tiny_dim

OVERLAY = REPO / "experiments" / "overlays" / "fsdp.yaml"


def test_overlay_builds_lightnings_fsdp_strategy_wrapping_dim_blocks():
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_argument("--strategy", type=FSDPStrategy)
    config = yaml.safe_load(OVERLAY.read_text())["trainer"]["strategy"]
    strategy = parser.instantiate_classes(parser.parse_object({"strategy": config})).strategy
    assert isinstance(strategy, FSDPStrategy)
    policy = strategy.kwargs["auto_wrap_policy"]
    assert DiMBlock in policy._module_classes
    assert strategy._state_dict_type == "full"


def test_the_ema_is_kept_out_of_fsdp():
    # configure_model only reads trainer.strategy; Lightning will not build a Trainer with FSDP on a CPU machine
    module = DiffusionModule(tiny_dim(), schedule="vp_sde")
    strategy = FSDPStrategy(auto_wrap_policy={DiMBlock})
    module.trainer = SimpleNamespace(strategy=strategy)
    module.configure_model()
    module.configure_model()  # idempotent
    assert strategy.kwargs["ignored_modules"] == [module.ema]

    module.trainer = SimpleNamespace(strategy=FSDPStrategy(use_orig_params=False))
    with pytest.raises(ValueError, match="use_orig_params=False"):
        module.configure_model()


CPU_FSDP = ("--config", str(OVERLAY), "--trainer.strategy.class_path=reliability_ddp_probe.CPUFSDPStrategy")
TWO_CPU_RANKS = ("--trainer.accelerator=cpu", "--trainer.devices=2")
PROBE = "--trainer.callbacks+=reliability_ddp_probe.ReplicaProbe"


def _run(proc) -> str:
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output[-6000:]
    return output


def _flat(tensors: dict) -> torch.Tensor:
    return torch.cat([v.flatten().float() for v in tensors.values()])


def test_fsdp_two_cpu_ranks_through_dimlab_fit(digits8, tmp_path):
    """Sharded training with gradient clipping (digits.yaml clips at 1.0); the probe checks after every step that
    the gathered weights and the EMA are the same on both ranks and the batches differ."""
    import dimlab

    root = tmp_path / "fsdp"
    _run(dimlab_fit(digits8, root, *CPU_FSDP, *TWO_CPU_RANKS, "--trainer.max_steps=4", PROBE))
    probes = [torch.load(root / f"probe-rank{r}.pt", weights_only=False) for r in range(2)]
    assert probes[0]["steps"] == probes[1]["steps"] == [1, 2, 3, 4]
    assert torch.equal(probes[0]["ema"], probes[1]["ema"])

    ckpt = load_checkpoint(root / "ckpt" / "last.ckpt")
    assert ckpt["global_step"] == 4
    assert torch.equal(_flat(ckpt["ema_backbone"]), probes[0]["ema"]), "the checkpoint holds the whole EMA"
    plain = dimlab.load_backbone(root / "ckpt" / "last.ckpt")  # read back without FSDP
    assert torch.equal(_flat(plain.state_dict()), probes[0]["ema"])


@pytest.mark.slow
def test_fsdp_resume_is_exact_and_fsdp_matches_ddp(digits8, tmp_path):
    """FSDP 4 steps + resume from last.ckpt to 6 == FSDP 6 steps straight (bitwise); FSDP == DDP up to reduction
    order."""
    fixed = (
        "--model.lr=1e-3",
        "--model.warmup_steps=100",
        "--checkpoint.every_n_train_steps=2",
        *TWO_CPU_RANKS,
    )
    resumed, straight, ddp = tmp_path / "resumed", tmp_path / "straight", tmp_path / "ddp"
    _run(dimlab_fit(digits8, resumed, *CPU_FSDP, *fixed, "--trainer.max_steps=4"))
    output = _run(
        dimlab_fit(digits8, resumed, *CPU_FSDP, *fixed, "--trainer.max_steps=6", "--ckpt_path=last")
    )
    assert "Restored all states from the checkpoint" in output
    _run(dimlab_fit(digits8, straight, *CPU_FSDP, *fixed, "--trainer.max_steps=6"))
    _run(dimlab_fit(digits8, ddp, "--trainer.strategy=ddp", *fixed, "--trainer.max_steps=6"))
    a, b, c = (load_checkpoint(root / "ckpt" / "last.ckpt") for root in (resumed, straight, ddp))
    assert a["global_step"] == b["global_step"] == c["global_step"] == 6
    keys = [k for k in b["state_dict"] if k.startswith("backbone.")]
    assert keys == [k for k in c["state_dict"] if k.startswith("backbone.")]
    for k in keys:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    assert torch.equal(_flat(a["ema_backbone"]), _flat(b["ema_backbone"]))

    # Reduce-scatter and all-reduce sum in different orders; Adam turns the tiny gradient differences of
    # near-zero gradients into at most about one learning rate per step (warmup: 0, 1e-5, ..., 5e-5).
    bound = 2 * sum(1e-3 * k / 100 for k in range(6))
    pairs = [
        (_flat({k: b["state_dict"][k] for k in keys}), _flat({k: c["state_dict"][k] for k in keys})),
        (_flat(b["ema_backbone"]), _flat(c["ema_backbone"])),
    ]
    for x, y in pairs:
        diff = (x - y).abs()
        assert diff.max() < bound and diff.mean() < bound / 100, (diff.max(), diff.mean())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fsdp_one_gpu_trains_updates_the_whole_ema_and_checkpoints(tmp_path):
    from torch.distributed.fsdp import FullyShardedDataParallel

    import dimlab

    torch.manual_seed(0)
    module = DiffusionModule(tiny_dim(), schedule="vp_sde", warmup_steps=0, lr=1e-3, ema_decay=0.5)
    initial = {k: v.clone() for k, v in module.ema.module.state_dict().items()}
    trainer = L.Trainer(
        accelerator="cuda",
        devices=1,
        strategy=FSDPStrategy(auto_wrap_policy={DiMBlock}),
        max_steps=3,
        gradient_clip_val=1.0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        default_root_dir=str(tmp_path),
    )
    trainer.fit(module, DataLoader(TinyImages(), batch_size=4))
    root = trainer.strategy.model
    assert isinstance(root, FullyShardedDataParallel)
    assert any(isinstance(m, FullyShardedDataParallel) for m in module.backbone.modules())
    assert not any(isinstance(m, FullyShardedDataParallel) for m in module.ema.modules())
    ema = module.ema.module.state_dict()
    assert all(v.device.type == "cuda" for v in ema.values())
    assert all(ema[k].shape == initial[k].shape for k in initial), "the EMA is whole, not sharded"
    assert any(not torch.equal(ema[k].cpu(), initial[k]) for k in initial), "the EMA moved"

    path = tmp_path / "fsdp.ckpt"
    trainer.save_checkpoint(path)
    ckpt = load_checkpoint(path)
    assert set(ckpt["ema_backbone"]) == set(initial)
    for k, v in ckpt["ema_backbone"].items():
        assert torch.equal(v, ema[k].cpu()), k
    with FullyShardedDataParallel.summon_full_params(root, writeback=False):
        weights = {n: p.detach().cpu().clone() for n, p in module.backbone.named_parameters()}
    plain = dimlab.load_backbone(path, ema=False)  # no FSDP needed to read it back
    for name, p in plain.named_parameters():
        assert torch.equal(
            p, next(v for n, v in weights.items() if n.replace("_fsdp_wrapped_module.", "") == name)
        )

    resumed = DiffusionModule(tiny_dim(), schedule="vp_sde", warmup_steps=0, lr=1e-3, ema_decay=0.5)
    trainer = L.Trainer(
        accelerator="cuda",
        devices=1,
        strategy=FSDPStrategy(auto_wrap_policy={DiMBlock}),
        max_steps=5,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        default_root_dir=str(tmp_path),
    )
    trainer.fit(resumed, DataLoader(TinyImages(), batch_size=4), ckpt_path=str(path))
    assert trainer.global_step == 5


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")
def test_fsdp_two_gpus_through_dimlab_fit_with_the_overlay(digits8, tmp_path):
    root = tmp_path / "fsdp"
    proc = dimlab_fit(
        digits8,
        root,
        "--config",
        str(OVERLAY),
        "--trainer.accelerator=gpu",
        "--trainer.devices=2",
        "--trainer.max_steps=4",
        "--trainer.callbacks+=reliability_ddp_probe.ReplicaProbe",
    )
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output[-6000:]
    probes = [torch.load(root / f"probe-rank{r}.pt", weights_only=False) for r in range(2)]
    assert probes[0]["steps"] == probes[1]["steps"] == [1, 2, 3, 4]
    assert torch.equal(probes[0]["ema"], probes[1]["ema"])
    ckpt = load_checkpoint(root / "ckpt" / "last.ckpt")
    ema = torch.cat([v.flatten().float() for v in ckpt["ema_backbone"].values()])
    assert ckpt["global_step"] == 4 and torch.equal(ema, probes[0]["ema"])
