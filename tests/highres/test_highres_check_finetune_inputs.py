"""The ``make finetune-512`` pre-flight check: the real 512 config against shape-only (meta) checkpoints, and a
tiny config end to end on digit shards."""

from __future__ import annotations

from pathlib import Path

import torch

from dimlab.commands.check_finetune import FinetuneInputError, check_checkpoint, main, read_fit_config
from dimlab.data.manifest import read_manifest
from dimlab.models.checkpoint import backbone_checkpoint
from dimlab.models.presets import build_backbone
from dimlab.models.spec import backbone_spec
from tiny_models import tiny_dim

REPO = Path(__file__).resolve().parents[2]
FT_CONFIG = REPO / "experiments" / "imagenet512" / "dim_h2_ft.yaml"


def _save_backbone(model, path):
    torch.save(backbone_checkpoint(backbone_spec(model)["init_args"], model.state_dict(), "test"), path)
    return path


def _meta_checkpoint(preset, path):
    """A backbone file of the real preset holding meta tensors: all the shapes, none of the gigabytes."""
    with torch.device("meta"):
        model = build_backbone(preset)
    return _save_backbone(model, path)


def _run(capsys, *argv):
    status = main(list(map(str, argv)))
    out = capsys.readouterr()
    return status, out.out, out.err


def test_real_512_config_accepts_a_dim_h2_256_checkpoint(tmp_path, capsys):
    ckpt = _meta_checkpoint("dim_h2", tmp_path / "dim_h2_256.pt")
    found = check_checkpoint(read_fit_config(FT_CONFIG), ckpt)
    assert found.resized == ["pos_embed"] and not found.newly_initialised and not found.ignored
    assert (found.source_grid, found.target_grid) == ((16, 16), (32, 32))
    assert found.copied == len(torch.load(ckpt, map_location="meta")["backbone"]) - 1
    # the checkpoint passes, so the missing 512 data is what stops the run
    status, _, err = _run(capsys, "--config", FT_CONFIG, "--ckpt", ckpt, "--data", tmp_path / "no_latents")
    assert status == 2 and "DATA_512" in err and "no_latents" in err and "not found" in err


def test_missing_or_wrong_checkpoints_fail_first(tmp_path, capsys):
    status, _, err = _run(capsys, "--config", FT_CONFIG, "--ckpt", tmp_path / "nope.ckpt", "--data", tmp_path)
    assert status == 2 and "CKPT_256" in err and "nope.ckpt" in err and "not found" in err
    wrong = _meta_checkpoint("dim_l2", tmp_path / "dim_l2.pt")  # width 1024, not 1536
    status, _, err = _run(capsys, "--config", FT_CONFIG, "--ckpt", wrong, "--data", tmp_path)
    assert status == 2 and "does not fit model.backbone" in err
    assert "patch_embed.weight: expected (1536, 4, 2, 2), got (1024, 4, 2, 2)" in err
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    status, _, err = _run(capsys, "--config", FT_CONFIG, "--ckpt", junk, "--data", tmp_path)
    assert status == 2 and "junk.ckpt" in err
    status, _, err = _run(capsys, "--config", tmp_path / "none.yaml", "--ckpt", junk, "--data", tmp_path)
    assert status == 2 and "none.yaml" in err


def _tiny_config(path, input_size=16, resolution=16):
    path.write_text(
        f"""
model:
  backbone:
    class_path: dimlab.models.dim.DiM
    init_args: {{input_size: {input_size}, patch_size: 2, in_channels: 1, hidden_size: 32, depth: 3,
                 num_classes: 10, d_state: 4, scan_backend: torch, pad_fill: rho_pad}}
  init_from: null
  schedule: vp_sde
data:
  train_shards: null
  kind: pixels
  resolution: {resolution}
  channels: 1
  num_classes: 10
  batch_size: 8
  num_workers: 0
  flip: false
"""
    )
    return path


def test_tiny_fine_tune_inputs_pass_and_mismatched_data_fails(tmp_path, capsys, digit_shards):
    ckpt = _save_backbone(tiny_dim(num_classes=10), tmp_path / "tiny8.pt")
    config = _tiny_config(tmp_path / "ft.yaml")
    status, out, err = _run(capsys, "--config", config, "--ckpt", ckpt, "--data", digit_shards(size=16))
    assert status == 0, err
    assert "resized ['pos_embed']" in out and "4x4 -> 8x8" in out
    train = read_manifest(digit_shards(size=16))["splits"]["train"]
    assert f"{len(train['shards'])} shard(s), {train['samples']} training samples" in out
    # 8 px shards for a 16 px fine-tune: the manifest check of the real data module
    status, _, err = _run(capsys, "--config", config, "--ckpt", ckpt, "--data", digit_shards(size=8))
    assert status == 2 and "resolution 8 but resolution=16" in err
    # a config whose model is not built for the data size
    bad = _tiny_config(tmp_path / "bad.yaml", input_size=8)
    status, _, err = _run(capsys, "--config", bad, "--ckpt", ckpt, "--data", digit_shards(size=16))
    assert status == 2 and "input_size is 8" in err


def test_error_type_is_a_value_error():
    assert issubclass(FinetuneInputError, ValueError)
