"""The analytic MAC/FLOP count against docs/backbone.md "Compute" and the published U-ViT figure."""

from __future__ import annotations

import pytest
import torch

from dimlab.flops import (
    H100_BF16_DENSE_TFLOPS,
    backbone_cost,
    dim_cost,
    dim_flops,
    mfu,
    uvit_block_macs,
    uvit_cost,
    uvit_flops,
)
from dimlab.models.presets import DIM_PRESETS, UVIT_PRESETS, build_backbone

# (preset, latent side, tokens, GMACs) from docs/backbone.md "Compute".
DIM_TABLE = [
    ("dim_s2", 32, 366, 18.3),
    ("dim_l2", 32, 366, 139.9),
    ("dim_h2", 32, 366, 311.8),
    ("dim_h2", 64, 1230, 1048.0),
    ("dim_h2", 128, 4494, 3829.0),
    ("dim_h2", 192, 9806, 8354.0),
]
# U-ViT-H/2 GMACs from the same section. The spec's count has 28 transformer blocks; U-ViT-H has 29 (14 in, one
# mid, 14 out), so the spec figure equals our count minus one block.
UVIT_SPEC_TABLE = [(32, 129.0), (64, 564.0), (128, 3063.0), (192, 9935.0)]


@pytest.mark.parametrize(("preset", "side", "tokens", "gmacs"), DIM_TABLE)
def test_dim_macs_match_reference_table(preset, side, tokens, gmacs):
    cost = dim_cost(DIM_PRESETS[preset], (side, side))
    assert cost.tokens == tokens
    assert cost.gmacs == pytest.approx(gmacs, rel=0.01)


@pytest.mark.parametrize(("side", "gmacs"), UVIT_SPEC_TABLE)
def test_uvit_macs_match_reference_table_less_mid_block(side, gmacs):
    cost = uvit_cost(UVIT_PRESETS["uvit_h2"], side)
    spec_count = cost.total_macs - uvit_block_macs(1152, cost.tokens)
    assert spec_count / 1e9 == pytest.approx(gmacs, rel=0.01)


def test_uvit_h2_matches_published_133_gflops():
    # U-ViT's paper lists 133 "GFLOPs" (i.e. GMACs) for U-ViT-H/2 at 256.
    assert uvit_cost(UVIT_PRESETS["uvit_h2"]).gmacs == pytest.approx(133.0, rel=0.01)


def test_training_flops_are_six_times_macs_per_sample():
    config = DIM_PRESETS["dim_s2"]
    macs = dim_cost(config).total_macs
    assert dim_flops(config, batch=128) == pytest.approx(6 * macs * 128)
    assert dim_flops(config, batch=4, training=False) == pytest.approx(2 * macs * 4)
    u = UVIT_PRESETS["uvit_s2"]
    assert uvit_flops(u, batch=3) == pytest.approx(6 * uvit_cost(u).total_macs * 3)


def test_switches_remove_their_compute():
    base = dim_cost(DIM_PRESETS["dim_s2"])
    no_skip = dim_cost({**DIM_PRESETS["dim_s2"], "long_skip": False})
    no_pads = dim_cost({**DIM_PRESETS["dim_s2"], "line_pad": False, "cond_separator": False})
    assert no_skip.macs["long_skips"] == 0 and no_skip.total_macs < base.total_macs
    assert no_pads.tokens == 2 + 16 * 16
    assert dim_cost({**DIM_PRESETS["dim_s2"], "local_enhance": False}).macs["local_enhance"] == 0


def test_count_scales_with_sequence_as_expected():
    # Mamba is linear in the sequence length; attention quadratic.
    config = DIM_PRESETS["dim_h2"]
    small, large = dim_cost(config, 64), dim_cost(config, 128)
    per_token_small = small.macs["mamba_in_out_proj"] / small.tokens
    per_token_large = large.macs["mamba_in_out_proj"] / large.tokens
    assert per_token_small == pytest.approx(per_token_large)
    u_small, u_large = uvit_cost(UVIT_PRESETS["uvit_h2"], 64), uvit_cost(UVIT_PRESETS["uvit_h2"], 128)
    ratio = u_large.macs["attention_matmuls"] / u_small.macs["attention_matmuls"]
    assert ratio == pytest.approx((u_large.tokens / u_small.tokens) ** 2)


def test_backbone_cost_reads_built_modules():
    with torch.device("meta"):
        dim = build_backbone("dim_s2")
        uvit = build_backbone("uvit_s2")
    assert backbone_cost(dim).total_macs == dim_cost(DIM_PRESETS["dim_s2"]).total_macs
    assert backbone_cost(uvit, 64).total_macs == uvit_cost(UVIT_PRESETS["uvit_s2"], 64).total_macs
    with pytest.raises(TypeError, match="no FLOP count"):
        backbone_cost(torch.nn.Linear(2, 2))


def test_bad_config_and_sizes_are_rejected():
    with pytest.raises(ValueError, match="unknown keys.*hidden"):
        dim_cost({"hidden": 3})
    with pytest.raises(ValueError, match="not a multiple of patch_size"):
        dim_cost(DIM_PRESETS["dim_s2"], (33, 32))
    with pytest.raises(ValueError, match="batch"):
        dim_cost(DIM_PRESETS["dim_s2"]).flops(0)


def test_mfu_against_h100_peak():
    assert mfu(H100_BF16_DENSE_TFLOPS * 1e12 * 0.4) == pytest.approx(0.4)
    assert mfu(395e12, peak_tflops=790.0) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        mfu(1.0, peak_tflops=0)
