"""DiffusionModule: optimisation recipe, EMA, CFG dropout, checkpoints, exact resume, sampling."""

from __future__ import annotations

import warnings

import lightning as L
import pytest
import torch

from dimlab.lit.module import DiffusionModule, no_decay_parameter_names


def _module(backbone, **kwargs):
    defaults = dict(schedule="vp_sde", p_uncond=0.1, lr=1e-3, warmup_steps=0, ema_decay=0.9, adam_eps=1e-8)
    defaults.update(kwargs)
    return DiffusionModule(backbone, **defaults)


def test_trains_and_loss_is_finite(tiny_backbone, blob_data, make_trainer, tmp_path):
    module = _module(tiny_backbone())
    before = [p.detach().clone() for p in module.backbone.parameters()]
    make_trainer(tmp_path, max_steps=3).fit(module, blob_data())
    changed = [not torch.equal(a, b) for a, b in zip(before, module.backbone.parameters(), strict=True)]
    assert all(changed), "every backbone parameter should receive an update"
    assert torch.isfinite(module.trainer.callback_metrics["train/loss"])


def test_accumulation_advances_lr_and_ema_once_per_optimizer_step(blob_data, make_trainer, tmp_path):
    from tiny_models import tiny_uvit

    module = _module(tiny_uvit(), warmup_steps=10, lr=1e-3)
    updates = []
    original = module.ema.update
    module.ema.update = lambda src: (updates.append(1), original(src))[1]
    make_trainer(tmp_path, max_steps=3, accumulate_grad_batches=2).fit(module, blob_data())
    assert module.trainer.global_step == 3
    assert len(updates) == 3, "EMA must advance once per optimizer step, not per micro-batch"
    lr = module.trainer.optimizers[0].param_groups[0]["lr"]
    assert lr == pytest.approx(1e-3 * 3 / 10), "linear warmup counts optimizer steps"


def test_warmup_starts_at_zero_and_reaches_constant():
    from tiny_models import tiny_uvit

    module = _module(tiny_uvit(), warmup_steps=4, lr=2e-4)
    sched = module.configure_optimizers()["lr_scheduler"]["scheduler"]
    lrs = []
    for _ in range(7):
        lrs.append(sched.optimizer.param_groups[0]["lr"])
        sched.optimizer.step()
        sched.step()
    assert lrs == pytest.approx([0.0, 5e-5, 1e-4, 1.5e-4, 2e-4, 2e-4, 2e-4])


def test_weight_decay_modes():
    from tiny_models import tiny_dim

    backbone = tiny_dim()
    opt_all = _module(backbone, weight_decay=0.03).configure_optimizers()["optimizer"]
    assert len(opt_all.param_groups) == 1 and opt_all.param_groups[0]["weight_decay"] == 0.03
    module = _module(tiny_dim(), weight_decay=0.03, weight_decay_mode="standard")
    decay, no_decay = module.configure_optimizers()["optimizer"].param_groups
    assert decay["weight_decay"] == 0.03 and no_decay["weight_decay"] == 0.0
    skip = no_decay_parameter_names(module.backbone)
    names = dict(module.backbone.named_parameters())
    assert {id(p) for p in no_decay["params"]} == {id(names[n]) for n in skip}
    assert all(names[n].ndim >= 2 for n in names if n not in skip)
    assert any("A_log" in n for n in skip) and any(n.endswith("bias") for n in skip)


def test_cfg_label_dropout():
    from tiny_models import tiny_uvit

    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 4, (20000,))
    dropped = _module(tiny_uvit(), p_uncond=0.25)._labels(y, len(y), g)
    frac = (dropped == 4).float().mean().item()
    assert abs(frac - 0.25) < 0.02
    kept = dropped != 4
    assert torch.equal(dropped[kept], y[kept])
    assert torch.equal(_module(tiny_uvit(), p_uncond=0.0)._labels(y, len(y), g), y)
    uncond = _module(tiny_uvit(), class_conditional=False)._labels(y, len(y), g)
    assert (uncond == 4).all()


def test_checkpoint_holds_backbone_spec_ema_and_rebuilds(tiny_backbone, blob_data, make_trainer, tmp_path):
    import dimlab
    from dimlab.sampling.sampler import load_sampler

    module = _module(tiny_backbone())
    trainer = make_trainer(tmp_path, max_steps=2)
    trainer.fit(module, blob_data())
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    assert set(ckpt["ema_backbone"]) == set(module.backbone.state_dict())
    assert not any(k.startswith("ema.") for k in ckpt["state_dict"]), "EMA is stored once, as ema_backbone"
    assert ckpt["dimlab_diffusion"]["schedule"] == "vp_sde"
    ema_net = dimlab.load_backbone(path)
    for k, v in module.ema.module.state_dict().items():
        assert torch.equal(ema_net.state_dict()[k], v)
    raw_net = dimlab.load_backbone(path, ema=False)
    for k, v in module.backbone.state_dict().items():
        assert torch.equal(raw_net.state_dict()[k], v)
    restored = DiffusionModule.load_from_checkpoint(path, backbone=tiny_backbone())
    for k, v in module.ema.module.state_dict().items():
        assert torch.equal(restored.ema.module.state_dict()[k], v)
    sampler = load_sampler(path)
    images = sampler.sample([0, 1, 2], seeds=[1, 2, 3], cfg_scale=1.0, sampler="dpm++", steps=4)
    assert images.shape == (3, 1, 8, 8) and torch.isfinite(images).all()
    assert torch.allclose(
        images[1], sampler.sample([1], seeds=[2], cfg_scale=1.0, sampler="dpm++", steps=4)[0], atol=1e-5
    ), "a sample depends only on its own seed and label, not on the batch"


def test_resume_is_exact(tmp_path, digit_shards):
    """N steps straight == N/2 steps + resume from the mid-run checkpoint + N/2 steps (shard data position too)."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from tiny_models import digits8_data, tiny_dim, tiny_trainer

    digits = digit_shards(size=8, shard_size=100)

    def run(max_steps, root, ckpt_path=None):
        L.seed_everything(0)
        module = _module(tiny_dim(num_classes=10), warmup_steps=3)
        data = digits8_data(digits, samples_per_epoch=48, shuffle_buffer=50, seed=3)
        ckpt = ModelCheckpoint(dirpath=str(root / "ckpt"), every_n_train_steps=4, save_top_k=-1)
        trainer = tiny_trainer(root, max_steps, enable_checkpointing=True, callbacks=[ckpt])
        trainer.fit(module, data, ckpt_path=ckpt_path)
        return module

    # 6 batches per epoch: the step-4 checkpoint is in the middle of the first epoch.
    straight = run(10, tmp_path / "a")
    mid = tmp_path / "a" / "ckpt" / "epoch=0-step=4.ckpt"
    assert mid.is_file()
    resumed = run(10, tmp_path / "b", ckpt_path=str(mid))
    for (name, a), b in zip(
        straight.backbone.state_dict().items(), resumed.backbone.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    for a, b in zip(
        straight.ema.module.state_dict().values(), resumed.ema.module.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)


def test_validate_and_test_subcommands_report_the_ema_loss(tmp_path, digit_shards):
    """`dimlab validate` and `dimlab test` run the EMA loss over the held-out split of a shard folder."""
    from dimlab.commands.fit import DimlabCLI

    digits = digit_shards(size=8, shard_size=100)
    common = [
        "--config",
        "experiments/demo/digits.yaml",
        f"--data.train_shards={digits}",
        f"--data.val_shards={digits}",
        f"--trainer.default_root_dir={tmp_path / 'run'}",
        "--trainer.limit_val_batches=2",
        "--trainer.limit_test_batches=2",
        "--model.backbone.init_args.hidden_size=16",
        "--model.backbone.init_args.depth=3",
    ]
    for subcommand, key in (("validate", "val/loss_ema"), ("test", "test/loss_ema")):
        cli = DimlabCLI(args=[subcommand, *common])
        value = cli.trainer.callback_metrics[key]
        assert torch.isfinite(value) and value > 0


def test_run_summary_reports_throughput_for_fresh_and_resumed_runs(blob_data, tmp_path):
    import json

    from dimlab.lit.callbacks import RunSummary
    from tiny_models import tiny_trainer, tiny_uvit

    def run(max_steps, ckpt_path=None):
        module = _module(tiny_uvit())
        trainer = tiny_trainer(tmp_path, max_steps, callbacks=[RunSummary(skip_steps=2)])
        trainer.fit(module, blob_data(n=32, batch_size=8), ckpt_path=ckpt_path)
        return trainer, json.loads((tmp_path / "summary.json").read_text())

    trainer, first = run(6)
    trainer.save_checkpoint(tmp_path / "six.ckpt")
    _, resumed = run(12, ckpt_path=str(tmp_path / "six.ckpt"))
    for summary, step in ((first, 6), (resumed, 12)):
        assert summary["global_step"] == step and summary["finished"]
        assert summary["images_per_sec"] > 0, summary


def _eval_mode_warnings(module, blob_data, make_trainer, tmp_path) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_trainer(tmp_path, max_steps=1).fit(module, blob_data())
    return [str(w.message) for w in caught if "in eval mode at the start of training:" in str(w.message)]


def test_only_modules_in_eval_mode_by_mistake_are_reported(blob_data, make_trainer, tmp_path):
    from tiny_models import tiny_dim

    # the EMA copy is in eval mode by design: nothing to report
    assert _eval_mode_warnings(_module(tiny_dim()), blob_data, make_trainer, tmp_path) == []
    module = _module(tiny_dim())
    module.backbone.final_proj.eval()
    (message,) = _eval_mode_warnings(module, blob_data, make_trainer, tmp_path)
    assert message.startswith("1 module(s) are in eval mode at the start of training: backbone.final_proj.")
