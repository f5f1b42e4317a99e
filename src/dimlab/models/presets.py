"""Named backbone sizes: the official DiM S/L/H models and, through ``dimlab.models.uvit``, the U-ViT baselines."""

from __future__ import annotations

from typing import Any

from torch import nn

# Constructor kwargs of the released DiM configs (dim-reference.md 1.1). Everything else keeps the DiM defaults
# (all four components on, d_state 16, d_conv 3, expand 2, skip fusion "auto").
DIM_PRESETS: dict[str, dict[str, Any]] = {
    # configs/cifar10_S_DiM.py: pixels 3x32x32, unconditional (always the null class 10). 50,568,716 params.
    "dim_s2": dict(input_size=32, patch_size=2, in_channels=3, hidden_size=512, depth=25, num_classes=10),
    # configs/imagenet256_L_DiM.py: SD-VAE latents 4x32x32, 1000 classes. 386,063,376 params.
    "dim_l2": dict(input_size=32, patch_size=2, in_channels=4, hidden_size=1024, depth=49, num_classes=1000),
    # configs/imagenet256_H_DiM.py. 862,407,184 params.
    "dim_h2": dict(input_size=32, patch_size=2, in_channels=4, hidden_size=1536, depth=49, num_classes=1000),
    # configs/imagenet512_H_DiM_ft.py: latents 4x64x64 (32x32 tokens), rho_pad fill. 863,586,832 params.
    "dim_h2_512": dict(
        input_size=64,
        patch_size=2,
        in_channels=4,
        hidden_size=1536,
        depth=49,
        num_classes=1000,
        pad_fill="rho_pad",
    ),
}

#: Exact parameter counts of the official models with every component on (dim-reference.md 3.1).
DIM_PARAM_COUNTS: dict[str, int] = {
    "dim_s2": 50_568_716,
    "dim_l2": 386_063_376,
    "dim_h2": 862_407_184,
    "dim_h2_512": 863_586_832,
}


def _uvit_presets() -> dict[str, dict[str, Any]]:
    # Imported lazily so that building a DiM never imports the U-ViT module (and vice versa).
    from dimlab.models.uvit import UVIT_PRESETS

    return UVIT_PRESETS


def preset_names() -> list[str]:
    """Every name :func:`build_backbone` accepts (DiM and U-ViT presets)."""
    return sorted(DIM_PRESETS) + sorted(_uvit_presets())


def build_backbone(name: str, **overrides: Any) -> nn.Module:
    """Build the backbone preset ``name`` with constructor ``overrides`` applied on top of the preset kwargs.

    DiM names: ``dim_s2``, ``dim_l2``, ``dim_h2``, ``dim_h2_512``; U-ViT names come from
    ``dimlab.models.uvit.UVIT_PRESETS``. Use ``with torch.device("meta"):`` around the call to get a shape-only
    model without allocating memory.
    """
    if name in DIM_PRESETS:
        from dimlab.models.dim import DiM

        return DiM(**{**DIM_PRESETS[name], **overrides})
    uvit_presets = _uvit_presets()
    if name in uvit_presets:
        from dimlab.models.uvit import UViT

        return UViT(**{**uvit_presets[name], **overrides})
    raise KeyError(f"unknown backbone preset {name!r}; expected one of {preset_names()}")
