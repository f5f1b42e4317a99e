"""Tiny backbones shared by tests (fast on 2 CPU cores)."""

from __future__ import annotations


def tiny_uvit(num_classes: int = 4, channels: int = 1, size: int = 8):
    from dimlab.models.uvit import UViT

    return UViT(
        input_size=size,
        patch_size=2,
        in_channels=channels,
        hidden_size=32,
        depth=3,
        num_heads=2,
        num_classes=num_classes,
    )


def tiny_dim(num_classes: int = 4, channels: int = 1, size: int = 8):
    from dimlab.models.dim import DiM

    return DiM(
        input_size=size,
        patch_size=2,
        in_channels=channels,
        hidden_size=32,
        depth=3,
        num_classes=num_classes,
        d_state=4,
        scan_backend="torch",
    )
