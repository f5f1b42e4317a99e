"""Official weights are samplable with one command after ``dimlab convert-official``: the conversion records
what the official recipe fixes about sampling (schedule, latent shape, classes, VAE), or takes it as flags."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dimlab.commands.main import main
from dimlab.models.official import dimlab_to_official
from dimlab.sampling.sampler import load_sampler
from dimlab.sampling.spec import CHECKPOINT_KEY, DiffusionSpec
from tiny_models import tiny_dim


def official_file(tmp_path, **overrides):
    """An official-format state dict of a tiny DiM (3 classes), saved as ``nnet_ema.pth``."""
    torch.manual_seed(0)
    path = tmp_path / "nnet_ema.pth"
    torch.save(dimlab_to_official(tiny_dim(num_classes=3, **overrides).state_dict()), path)
    return path


def convert(tmp_path, *flags, **overrides):
    dst = tmp_path / "converted.pt"
    assert main(["convert-official", str(official_file(tmp_path, **overrides)), str(dst), *flags]) == 0
    return dst


def test_cifar_architecture_records_the_pixel_vp_sde_recipe_and_samples(tmp_path, capsys):
    dst = convert(tmp_path, in_channels=3)
    assert "vp_sde" in capsys.readouterr().out
    entry = torch.load(dst, weights_only=True)[CHECKPOINT_KEY]
    spec = DiffusionSpec.from_checkpoint(entry)
    assert spec == DiffusionSpec(
        schedule="vp_sde", latent_shape=(3, 8, 8), num_classes=3, class_conditional=False
    )
    out = tmp_path / "samples"
    argv = ["sample", "--ckpt", str(dst), "--num", "2", "--steps", "3", "--out", str(out), "--npz"]
    assert main([*argv, "--device", "cpu"]) == 0
    assert np.load(out / "samples.npz")["arr_0"].shape == (2, 8, 8, 3)
    assert json.loads((out / "sample_args.json").read_text())["labels"] == [
        3,
        3,
    ]  # unconditional: the null id


def test_imagenet_architecture_records_the_latent_recipe_and_asks_for_the_vae(tmp_path, capsys):
    dst = convert(tmp_path, in_channels=4)
    spec = DiffusionSpec.from_checkpoint(torch.load(dst, weights_only=True)[CHECKPOINT_KEY])
    assert (spec.schedule, spec.latent_space, spec.class_conditional) == ("sd_discrete", True, True)
    assert spec.latent_shape == (4, 8, 8) and spec.num_classes == 3 and spec.image_size == (64, 64)
    assert spec.latent_scale == 0.18215 and spec.vae_path is None
    capsys.readouterr()
    assert main(["sample", "--ckpt", str(dst), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "latent-space model: pass its VAE folder with --vae" in err
    recorded = convert(tmp_path, "--vae", "/models/sd-vae-ft-ema", in_channels=4)
    assert torch.load(recorded, weights_only=True)[CHECKPOINT_KEY]["vae_path"] == "/models/sd-vae-ft-ema"


def test_other_architectures_take_the_recipe_as_flags(tmp_path, capsys):
    src = official_file(tmp_path, in_channels=2)
    dst = tmp_path / "converted.pt"
    assert (
        main(["convert-official", str(src), str(dst)]) == 0
    )  # the weights convert; nothing says how to sample
    assert "not recorded (in_channels=2" in capsys.readouterr().out
    assert CHECKPOINT_KEY not in torch.load(dst, weights_only=True)
    assert main(["sample", "--ckpt", str(dst), "--out", str(tmp_path / "o")]) == 2
    assert "with --schedule and --space" in capsys.readouterr().err
    assert main(["convert-official", str(src), str(dst), "--space", "pixels"]) == 2
    err = capsys.readouterr().err
    assert "in_channels=2 matches no official recipe" in err and "--schedule" in err
    flags = ["--schedule", "vp_sde", "--space", "pixels", "--class-conditional"]
    assert main(["convert-official", str(src), str(dst), *flags]) == 0
    sampler = load_sampler(dst)
    assert (
        sampler.spec.schedule == "vp_sde" and sampler.class_conditional and sampler.latent_shape == (2, 8, 8)
    )
    images = sampler.sample([0, 2], seeds=[0, 1], steps=3)
    assert images.shape == (2, 2, 8, 8)


def test_flags_override_the_recipe(tmp_path):
    dst = convert(tmp_path, "--no-class-conditional", "--schedule", "sd_discrete", in_channels=3)
    spec = load_sampler(dst).spec
    assert spec.schedule == "sd_discrete" and not spec.class_conditional and not spec.latent_space


@pytest.mark.parametrize("bad", [["--vae", "/vae"], ["--space", "pixels", "--vae", "/vae"]])
def test_a_vae_for_a_pixel_model_is_one_line(tmp_path, capsys, bad):
    src = official_file(tmp_path, in_channels=3)
    assert main(["convert-official", str(src), str(tmp_path / "d.pt"), *bad]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--vae" in err and "pixel" in err
