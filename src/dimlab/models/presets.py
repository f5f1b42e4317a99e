"""Named backbone sizes in one table: the official DiM S/L/H models and the U-ViT baselines.

Each preset is a backbone spec (``class_path`` + constructor kwargs), the same description checkpoints and
``dimlab fit`` configs use, so this table needs no model import. Provenance and the exact parameter counts are in
docs/backbone.md ("Presets") and docs/uvit.md.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from dimlab.models.spec import build_from_spec

__all__ = ["DIM_PARAM_COUNTS", "DIM_PRESETS", "PRESETS", "UVIT_PRESETS", "build_backbone", "preset_names"]

DIM_CLASS_PATH = "dimlab.models.dim.DiM"
UVIT_CLASS_PATH = "dimlab.models.uvit.UViT"

#: name -> (class_path, constructor kwargs). Unlisted kwargs keep the constructor defaults (DiM: all four
#: components on, d_state 16, d_conv 3, expand 2, skip fusion "auto").
PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    # DiM, the released configs. configs/cifar10_S_DiM.py: pixels 3x32x32, unconditional (always the null class 10).
    "dim_s2": (DIM_CLASS_PATH, dict(input_size=32, patch_size=2, in_channels=3, hidden_size=512, depth=25, num_classes=10)),
    # configs/imagenet256_L_DiM.py: SD-VAE latents 4x32x32, 1000 classes.
    "dim_l2": (DIM_CLASS_PATH, dict(input_size=32, patch_size=2, in_channels=4, hidden_size=1024, depth=49, num_classes=1000)),
    # configs/imagenet256_H_DiM.py.
    "dim_h2": (DIM_CLASS_PATH, dict(input_size=32, patch_size=2, in_channels=4, hidden_size=1536, depth=49, num_classes=1000)),
    # configs/imagenet512_H_DiM_ft.py: latents 4x64x64 (32x32 tokens), rho_pad fill.
    "dim_h2_512": (DIM_CLASS_PATH, dict(
        input_size=64, patch_size=2, in_channels=4, hidden_size=1536, depth=49, num_classes=1000, pad_fill="rho_pad",
    )),
    # U-ViT (baofff/U-ViT configs). configs/cifar10_uvit.py: unconditional (num_classes=-1, so no class token).
    "uvit_s2": (UVIT_CLASS_PATH, dict(
        input_size=32, patch_size=2, in_channels=3, hidden_size=512, depth=13, num_heads=8,
        mlp_ratio=4.0, qkv_bias=False, mlp_time_embed=False, num_classes=0, use_final_conv=True,
    )),
    # configs/imagenet256_uvit_large.py: SD-VAE latents 4x32x32, 1000 classes + null, conv on.
    "uvit_l2": (UVIT_CLASS_PATH, dict(
        input_size=32, patch_size=2, in_channels=4, hidden_size=1024, depth=21, num_heads=16,
        mlp_ratio=4.0, qkv_bias=False, mlp_time_embed=False, num_classes=1000, use_final_conv=True,
    )),
    # configs/imagenet256_uvit_huge.py: conv off, mlp_time_embed off.
    "uvit_h2": (UVIT_CLASS_PATH, dict(
        input_size=32, patch_size=2, in_channels=4, hidden_size=1152, depth=29, num_heads=16,
        mlp_ratio=4.0, qkv_bias=False, mlp_time_embed=False, num_classes=1000, use_final_conv=False,
    )),
    # Not a published U-ViT model: H/2 on 4x64x64 latents, the same 32x32 token grid as DiM-H at 512.
    "uvit_h2_512": (UVIT_CLASS_PATH, dict(
        input_size=64, patch_size=2, in_channels=4, hidden_size=1152, depth=29, num_heads=16,
        mlp_ratio=4.0, qkv_bias=False, mlp_time_embed=False, num_classes=1000, use_final_conv=False,
    )),
    # configs/imagenet512_uvit_huge.py: U-ViT's published 512 model, patch 4 (16x16 tokens).
    "uvit_h4_512": (UVIT_CLASS_PATH, dict(
        input_size=64, patch_size=4, in_channels=4, hidden_size=1152, depth=29, num_heads=16,
        mlp_ratio=4.0, qkv_bias=False, mlp_time_embed=False, num_classes=1000, use_final_conv=False,
    )),
}  # fmt: skip

#: The constructor kwargs of each family's presets (views of :data:`PRESETS`).
DIM_PRESETS: dict[str, dict[str, Any]] = {n: kw for n, (cls, kw) in PRESETS.items() if cls == DIM_CLASS_PATH}
UVIT_PRESETS: dict[str, dict[str, Any]] = {
    n: kw for n, (cls, kw) in PRESETS.items() if cls == UVIT_CLASS_PATH
}

#: Exact parameter counts of the official DiM models with every component on (docs/backbone.md, "Presets").
DIM_PARAM_COUNTS: dict[str, int] = {
    "dim_s2": 50_568_716,
    "dim_l2": 386_063_376,
    "dim_h2": 862_407_184,
    "dim_h2_512": 863_586_832,
}


def preset_names() -> list[str]:
    """Every name :func:`build_backbone` accepts (DiM and U-ViT presets)."""
    return sorted(DIM_PRESETS) + sorted(UVIT_PRESETS)


def build_backbone(name: str, **overrides: Any) -> nn.Module:
    """Build the backbone preset ``name`` with constructor ``overrides`` applied on top of the preset kwargs.

    DiM names: ``dim_s2``, ``dim_l2``, ``dim_h2``, ``dim_h2_512``; U-ViT names: ``uvit_s2``, ``uvit_l2``,
    ``uvit_h2``, ``uvit_h2_512``, ``uvit_h4_512``. Use ``with torch.device("meta"):`` around the call to get a
    shape-only model without allocating memory.
    """
    if name not in PRESETS:
        raise KeyError(f"unknown backbone preset {name!r}; expected one of {preset_names()}")
    class_path, kwargs = PRESETS[name]
    return build_from_spec({"class_path": class_path, "init_args": {**kwargs, **overrides}})
