"""Backbone presets: exact official parameter counts (docs/backbone.md, "Presets") and name resolution."""

from __future__ import annotations

import pytest
import torch

from dimlab.models.dim import DiM
from dimlab.models.presets import DIM_PARAM_COUNTS, DIM_PRESETS, UVIT_PRESETS, build_backbone, preset_names
from dimlab.models.uvit import UViT


@pytest.mark.parametrize(
    ("name", "expected"),
    [("dim_s2", 50_568_716), ("dim_l2", 386_063_376), ("dim_h2", 862_407_184), ("dim_h2_512", 863_586_832)],
)
def test_official_parameter_counts(name, expected):
    with torch.device("meta"):
        model = build_backbone(name)
    assert isinstance(model, DiM)
    assert sum(p.numel() for p in model.parameters()) == expected
    assert DIM_PARAM_COUNTS[name] == expected


def test_preset_details():
    with torch.device("meta"):
        s2 = build_backbone("dim_s2")
        h512 = build_backbone("dim_h2_512")
        h256 = build_backbone("dim_h2")
    assert s2.blocks[13].skip_fusion.mode == "concat" and h256.blocks[25].skip_fusion.mode == "sum"
    assert h512.pad_fill == "rho_pad" and h256.pad_fill == "lateral"
    assert h512.grid_size == (32, 32) and h512.pos_embed.shape == (1, 2 + 1024, 1536)
    # H at 256 and at 512 differ only in the position table
    diff = {n: p.shape for n, p in h512.named_parameters()}
    assert {n for n, shape in diff.items() if dict(h256.named_parameters())[n].shape != shape} == {
        "pos_embed"
    }


def test_overrides_apply():
    with torch.device("meta"):
        model = build_backbone("dim_l2", depth=5, long_skip=False, num_classes=7)
    assert model.depth == 5 and model.num_skip_receivers == 0 and model.num_classes == 7
    assert model.hidden_size == DIM_PRESETS["dim_l2"]["hidden_size"]


def test_uvit_names_resolve():
    name = sorted(UVIT_PRESETS)[0]
    with torch.device("meta"):
        model = build_backbone(name)
    assert isinstance(model, UViT)
    assert set(preset_names()) == set(DIM_PRESETS) | set(UVIT_PRESETS)


def test_unknown_name_lists_choices():
    with pytest.raises(KeyError, match="dim_s2"):
        build_backbone("dim_xl2")
