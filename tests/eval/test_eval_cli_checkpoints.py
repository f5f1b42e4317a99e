"""``dimlab fid --ckpt`` and what it is given: crafted checkpoints are refused unless trusted, converted official
weights are scored with one command."""

from __future__ import annotations

import json

import numpy as np
import torch

from bad_files import crafted_checkpoint
from dimlab.commands.main import main
from dimlab.models.official import dimlab_to_official
from tiny_models import tiny_dim


def _fid_argv(ckpt, ref, weights) -> list[str]:
    argv = ["fid", "--ckpt", str(ckpt), "--num-samples", "4", "--ref", str(ref)]
    argv += ["--batch-size", "2", "--feature-dim", "64", "--inception-weights", str(weights)]
    return [*argv, "--accelerator", "cpu", "--no-progress", "--steps", "3"]


def test_fid_refuses_a_crafted_checkpoint_unless_trusted(tmp_path, capsys, random_inception_weights):
    path, marker = crafted_checkpoint(tmp_path)
    ref = tmp_path / "ref.npz"
    np.savez(ref, mu=np.zeros(64), sigma=np.eye(64))
    assert main(_fid_argv(path, ref, random_inception_weights)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err and "--trust-checkpoint" in err
    assert not marker.exists()
    main([*_fid_argv(path, ref, random_inception_weights), "--trust-checkpoint"])  # then fails on the content
    assert marker.exists()


def test_fid_scores_converted_official_weights_with_one_command(tmp_path, capsys, random_inception_weights):
    torch.manual_seed(0)
    official = tmp_path / "nnet_ema.pth"
    torch.save(dimlab_to_official(tiny_dim(in_channels=3, num_classes=3).state_dict()), official)
    converted = tmp_path / "converted.pt"
    assert main(["convert-official", str(official), str(converted)]) == 0
    ref = tmp_path / "ref.npz"
    np.savez(ref, mu=np.zeros(64), sigma=np.eye(64))
    out = tmp_path / "fid.json"
    assert main([*_fid_argv(converted, ref, random_inception_weights), "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert np.isfinite(report["fid"]) and report["num_samples"] == 4
    assert report["sampling"]["label_mode"] == "unconditional" and report["sampling"]["image_size"] == [8, 8]


def test_fid_checks_the_sampler_settings_before_loading(tmp_path, capsys, random_inception_weights):
    ref = tmp_path / "ref.npz"
    np.savez(ref, mu=np.zeros(64), sigma=np.eye(64))
    missing = tmp_path / "never-read.ckpt"
    missing.write_bytes(b"")
    assert main([*_fid_argv(missing, ref, random_inception_weights), "--steps", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--steps 2 with --sampler dpm++" in err and "at least 3 steps" in err
