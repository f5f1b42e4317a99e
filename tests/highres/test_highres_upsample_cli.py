"""``dimlab sample --resolution ... --upsample-guidance`` end to end on a tiny checkpoint (m = 2, 3, non-square)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dimlab.commands.main import main
from dimlab.models.dim import DiM
from dimlab.sampling.sampler import load_sampler, upsample_factor


class InputShapes:
    """Records the ``x`` shape of every DiM forward (a global forward pre-hook; observes, changes nothing)."""

    def __init__(self) -> None:
        self.shapes: list[tuple[int, ...]] = []

    def __enter__(self):
        def hook(module, args):
            if isinstance(module, DiM):
                self.shapes.append(tuple(args[0].shape))

        self.handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def _sample(ckpt, out, *extra, steps: int = 3):
    argv = ["sample", "--ckpt", str(ckpt), "--out", str(out), "--num", "1", "--steps", str(steps), "--npz"]
    assert main([*argv, "--class-labels", "3", *extra]) == 0
    images = np.load(out / "samples.npz")["arr_0"]
    return images, json.loads((out / "sample_args.json").read_text())


@pytest.mark.parametrize(
    "resolution,factor,low",
    [
        (["16"], None, (8, 8)),  # m = 2, the 512 -> 1024 case
        (["24"], None, (8, 8)),  # m = 3, the 512 -> 1536 case
        (["16", "24"], "2", (8, 12)),  # non-square: the low-resolution branch runs at 8x12
        (["24", "12"], "3", (8, 4)),
    ],
)
def test_upsample_guidance_end_to_end(tiny_dim_ckpt, tmp_path, resolution, factor, low):
    h, w = (int(resolution[0]),) * 2 if len(resolution) == 1 else map(int, resolution)
    extra = ["--resolution", *resolution, "--upsample-guidance", "--cfg-scale", "3.0"]
    extra += ["--ug-theta", "1", "--ug-eta", "0.3", "--ug-T", "1"]
    if factor:
        extra += ["--ug-factor", factor]
    with InputShapes() as seen:
        images, args = _sample(tiny_dim_ckpt, tmp_path / "ug", *extra)
    assert images.shape == (1, h, w, 1) and images.dtype == np.uint8
    assert args["sampler"] == "dpm", "upsample guidance defaults to plain DPM-Solver"
    assert args["cfg_scale"] == 3.0
    # CFG doubles the batch; the high-resolution pass every call, the low-resolution pass while t >= 0.7
    assert set(seen.shapes) == {(2, 1, h, w), (2, 1, *low)}


def test_sampler_default_follows_upsample_guidance_unless_given(tiny_dim_ckpt, tmp_path):
    _, args = _sample(tiny_dim_ckpt, tmp_path / "a", "--resolution", "16", "--upsample-guidance", steps=3)
    assert args["sampler"] == "dpm" and args["cfg_scale"] == 0.0
    _, args = _sample(
        tiny_dim_ckpt,
        tmp_path / "b",
        "--resolution",
        "16",
        "--upsample-guidance",
        "--sampler",
        "dpm++",
        steps=3,
    )
    assert args["sampler"] == "dpm++"
    _, args = _sample(tiny_dim_ckpt, tmp_path / "c", "--resolution", "16", steps=3)
    assert args["sampler"] == "dpm++"


def test_dpm_default_matches_an_explicit_dpm_run_and_guidance_changes_samples(tiny_dim_ckpt, tmp_path):
    common = ["--resolution", "16", "--cfg-scale", "3.0"]
    default, _ = _sample(tiny_dim_ckpt, tmp_path / "default", *common, "--upsample-guidance")
    explicit, _ = _sample(tiny_dim_ckpt, tmp_path / "dpm", *common, "--upsample-guidance", "--sampler", "dpm")
    unguided, _ = _sample(tiny_dim_ckpt, tmp_path / "plain", *common, "--sampler", "dpm")
    assert np.array_equal(default, explicit)
    assert not np.array_equal(default, unguided), "the guidance must change the samples"


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--resolution", "12", "--upsample-guidance"], "--ug-factor"),  # 1.5x
        (["--resolution", "8", "--upsample-guidance"], "m >= 2"),  # the trained size
        (["--resolution", "16", "24", "--upsample-guidance"], "--ug-factor"),  # 2x by 3x needs an explicit m
        (["--resolution", "16", "--upsample-guidance", "--ug-factor", "3"], "divide by m=3"),
        (["--resolution", "18", "--upsample-guidance", "--ug-factor", "2"], "patch size 2"),  # 9x9 low-res
        (["--resolution", "16", "--ug-factor", "2"], "needs --upsample-guidance"),
    ],
)
def test_bad_upsampling_requests_fail_before_sampling(tiny_dim_ckpt, tmp_path, extra, message):
    with pytest.raises(SystemExit, match=message):
        _sample(tiny_dim_ckpt, tmp_path / "x", *extra)
    assert not (tmp_path / "x").exists(), "nothing is written when the arguments are rejected"


def test_upsample_factor_rules():
    assert upsample_factor((32, 32), (64, 64)) == 2
    assert upsample_factor((32, 32), (96, 96), patch_size=2) == 3
    assert upsample_factor((32, 32), (64, 96), patch_size=2, factor=2) == 2
    with pytest.raises(ValueError, match="integer >= 2"):
        upsample_factor((32, 32), (64, 64), factor=1)


def test_skip_tune_scales_the_skips_by_time_and_is_exact_at_one(tiny_dim_ckpt):
    sampler = load_sampler(tiny_dim_ckpt)
    backbone = sampler.backbone
    assert backbone.num_skip_receivers == 2
    kw = dict(labels=[1, 2], seeds=[0, 1], cfg_scale=3.0, sampler="dpm", steps=4, latent_shape=(1, 16, 16))
    plain = sampler.sample(**kw)
    assert torch.equal(sampler.sample(**kw, skip_tune=(1.0, 1.0)), plain)
    scales: list[tuple[float, torch.Tensor]] = []

    def record(module, args, kwargs):
        scales.append((float(args[1].reshape(-1)[0]), kwargs["skip_scale"].clone()))

    handle = backbone.register_forward_pre_hook(record, with_kwargs=True)
    try:
        tuned = sampler.sample(
            **kw, skip_tune=(0.5, 1.0), model_fn_wrapper=sampler.upsample_guidance((1, 16, 16))
        )
    finally:
        handle.remove()
    assert not torch.allclose(tuned, plain)
    for t_net, s in scales:
        # receiver 0 keeps rho_bottom; the top receiver gets 1 + (0.5 - 1) t
        assert s.dtype == torch.float32, "float32 factors keep the stream in float32"
        torch.testing.assert_close(s[:, 0], torch.ones(s.shape[0]))
        torch.testing.assert_close(s[:, 1], torch.full((s.shape[0],), 1 - 0.5 * t_net / 1000))
    top = [float(s[0, 1]) for _, s in scales]
    assert min(top) == pytest.approx(0.5, abs=1e-3), "rho_top itself at t = 1"
    assert max(top) - min(top) > 0.2, "the factor follows the time"


def test_skip_tune_flag_through_the_cli(tiny_dim_ckpt, tmp_path):
    common = ["--resolution", "16", "--upsample-guidance", "--cfg-scale", "3.0"]
    base, _ = _sample(tiny_dim_ckpt, tmp_path / "a", *common)
    tuned, args = _sample(tiny_dim_ckpt, tmp_path / "c", *common, "--skip-tune", "0.0", "1.0")
    assert not np.array_equal(base, tuned)
    assert args["skip_tune"] == [0.0, 1.0]


def test_precision_and_cuda_graph_flags_through_the_cli(tiny_dim_ckpt, tmp_path):
    fp32, _ = _sample(tiny_dim_ckpt, tmp_path / "fp32", "--resolution", "16", "--upsample-guidance")
    bf16, args = _sample(
        tiny_dim_ckpt, tmp_path / "bf16", "--resolution", "16", "--upsample-guidance", "--precision", "bf16"
    )
    assert args["precision"] == "bf16" and args["cuda_graphs"] is False
    assert fp32.shape == bf16.shape == (1, 16, 16, 1)
    assert np.abs(fp32.astype(int) - bf16.astype(int)).mean() < 8  # uint8 levels: rounding, not another image
    if not torch.cuda.is_available():
        argv = ["sample", "--ckpt", str(tiny_dim_ckpt), "--out", str(tmp_path / "g"), "--cuda-graphs"]
        with pytest.raises(SystemExit, match="--cuda-graphs needs a CUDA device"):
            main(argv)


def test_compile_flag_through_the_cli(tiny_dim_ckpt, tmp_path, capsys):
    """--compile BACKEND samples the same image (aot_eager: traced whole, no C++ compiler needed on CI); a backend
    torch does not know is refused before anything loads."""
    common = ["--resolution", "16", "--upsample-guidance"]
    eager, _ = _sample(tiny_dim_ckpt, tmp_path / "eager", *common)
    compiled, args = _sample(tiny_dim_ckpt, tmp_path / "compiled", *common, "--compile", "aot_eager")
    assert args["compile"] == "aot_eager"
    np.testing.assert_array_equal(compiled, eager)
    argv = ["sample", "--ckpt", str(tiny_dim_ckpt), "--out", str(tmp_path / "bad"), "--compile", "yes"]
    capsys.readouterr()
    assert main(argv) == 2
    assert "--compile yes: compile must be True, False or a torch.compile backend" in capsys.readouterr().err
