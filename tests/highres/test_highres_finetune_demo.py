"""Weak-to-strong fine-tuning at toy scale: the low-to-high load through ``init_from`` and the demo's loss gap."""

from __future__ import annotations

import json

import pytest
import torch

from dimlab.demos.finetune import DemoSettings, main, print_report, run_demo
from dimlab.lit.module import DiffusionModule
from dimlab.models.checkpoint import read_backbone_file
from dimlab.models.layers import resize_pos_embed
from tiny_models import tiny_dim


def test_init_from_a_low_resolution_checkpoint(tiny_dim_ckpt):
    """The 256 -> 512 load on a tiny model: 8 px (4x4 tokens) into 16 px (8x8 tokens, rho_pad fill)."""
    _, source = read_backbone_file(tiny_dim_ckpt, ema=True)
    module = DiffusionModule(
        tiny_dim(depth=5, input_size=16, pad_fill="rho_pad"),  # the tiny_dim_ckpt model at 16 px
        init_from=str(tiny_dim_ckpt),
    )
    report = module.init_report
    assert report.resized == ["pos_embed"]
    assert not report.newly_initialised and not report.unexpected
    assert sorted(report.copied) == sorted(set(source) - {"pos_embed"})
    target = module.backbone.state_dict()
    for name in report.copied:
        assert torch.equal(target[name], source[name]), name
    torch.testing.assert_close(target["pos_embed"], resize_pos_embed(source["pos_embed"], (4, 4), (8, 8)))
    for name, value in module.ema.module.state_dict().items():
        assert torch.equal(value, target[name]), f"the EMA starts as a copy of the loaded weights ({name})"
    x = torch.randn(3, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = module.backbone(x, torch.tensor([10.0, 500.0, 990.0]), torch.tensor([0, 3, 4]))
    assert out.shape == x.shape and torch.isfinite(out).all()


@pytest.mark.slow
def test_finetuned_model_starts_far_lower_than_a_fresh_one(tmp_path):
    settings = DemoSettings(
        hidden_size=32,
        depth=3,
        d_state=4,
        batch_size=8,
        pretrain_steps=10,
        finetune_steps=2,
        eval_batches=1,
        lr=4e-3,
        scan_backend="torch",
    )
    result = run_demo(settings, tmp_path / "data", tmp_path / "out")
    fresh, tuned = result["fresh"], result["finetuned"]
    assert tuned["resized"] == ["pos_embed"] and not tuned["newly_initialised"]
    assert fresh["copied"] == 0 and tuned["copied"] > 0
    assert len(tuned["train_losses"]) == len(fresh["train_losses"]) == 2
    # "far lower": well under 70 % of the fresh model's loss, at step 0 and over the first steps
    assert tuned["eval_loss_step0"] < 0.7 * fresh["eval_loss_step0"]
    assert tuned["mean_train_loss"] < 0.7 * fresh["mean_train_loss"]
    saved = json.loads((tmp_path / "out" / "finetune_demo.json").read_text())
    assert saved["step0_ratio"] == pytest.approx(tuned["eval_loss_step0"] / fresh["eval_loss_step0"])
    assert (tmp_path / "data" / "digits8" / "manifest.json").is_file()
    assert (tmp_path / "data" / "digits16" / "manifest.json").is_file()


def test_demo_rejects_a_high_size_not_above_the_low_one(capsys):
    with pytest.raises(SystemExit):
        main(["--low", "16", "--high", "16"])
    assert "--high 16 must be larger than --low 16" in capsys.readouterr().err


def test_the_report_keeps_its_lines_whole_in_a_log(capsys, monkeypatch, tmp_path):
    monkeypatch.delenv("COLUMNS", raising=False)  # stdout is captured: not a terminal, as in a SLURM log
    side = {"eval_loss_step0": 1.0, "mean_train_loss": 0.5, "eval_loss_end": 0.3}
    result = {
        "settings": {"low": 8, "high": 16, "pretrain_steps": 200, "finetune_steps": 20},
        "fresh": {**side, "copied": 0, "resized": [], "newly_initialised": []},
        "finetuned": {**side, "copied": 80, "resized": ["pos_embed"], "newly_initialised": []},
        "pretrain_final_loss": 0.19,
        "pretrain_seconds": 30.0,
        "step0_ratio": 0.2,
        "first_k_ratio": 0.23,
        "low_checkpoint": str(tmp_path / "a" / "long" / "folder" / "low" / "checkpoints" / "last.ckpt"),
    }
    print_report(result)
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("init_from: 80 tensors copied") and line.endswith("30 s)") for line in lines)
    report = tmp_path / "a" / "long" / "folder" / "low" / "finetune_demo.json"
    assert any(line.startswith("fine-tuned / fresh: 0.20") and line.endswith(str(report)) for line in lines)
