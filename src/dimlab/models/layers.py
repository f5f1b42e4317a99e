"""Pieces both backbones share: RMSNorm, adaLN modulation, the timestep sinusoid, position-table resizing, sizes.

DiM uses all of them; U-ViT uses the sinusoid, the position-table resize and :func:`to_pair`. Nothing here knows
which backbone calls it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

__all__ = ["RMSNorm", "modulate", "resize_pos_embed", "timestep_sinusoid", "to_pair"]


class RMSNorm(nn.Module):
    """Root-mean-square norm with a learnable per-channel weight (init 1) and no bias.

    Unlike ``torch.nn.RMSNorm`` the statistics are always computed in fp32 and the result is returned in the
    weight's dtype. DiM keeps its residual stream in fp32 (as mamba-ssm's fused add-norm with
    ``residual_in_fp32`` does), so the input is usually fp32 while the layers after the norm may hold bf16
    weights; returning the weight dtype lets both autocast and bf16-true training work without casts at every
    call site. The arithmetic itself is ``torch.nn.functional.rms_norm``.
    """

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``x`` over its last dimension and scale by the weight."""
        out = F.rms_norm(x.float(), (x.shape[-1],), self.weight.float(), self.eps)
        return out.to(self.weight.dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


class TimestepMLP(nn.Module):
    """``Linear(in -> D) -> SiLU -> Linear(D -> D)`` on a timestep sinusoid: diffusers' ``TimestepEmbedding``.

    Written here rather than imported so that the backbones need no diffusers (only the VAE does). It keeps that
    class's parameter names (``linear_1``, ``linear_2``), creation order and default init, so official
    checkpoints load into it and a seeded model is the same as with diffusers' class.
    """

    def __init__(self, in_channels: int, embed_dim: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(in_channels, embed_dim)
        self.act = nn.SiLU()
        self.linear_2 = nn.Linear(embed_dim, embed_dim)

    def forward(self, sample: torch.Tensor) -> torch.Tensor:
        """(..., in_channels) sinusoid -> (..., embed_dim) embedding."""
        return self.linear_2(self.act(self.linear_1(sample)))


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation ``x * (1 + scale) + shift``; ``shift``/``scale`` are (B, D) and broadcast over tokens."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def timestep_sinusoid(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding ``[cos(t f_i), sin(t f_i)]`` with ``f_i = max_period^(-i / (dim // 2))``.

    The time sinusoid of both backbones (DiM's time token, its adaLN input at width 256, U-ViT's time token):
    the same numbers as diffusers' ``get_timestep_embedding(t, dim, flip_sin_to_cos=True,
    downscale_freq_shift=0)``, written out so the sinusoid does not need the diffusers model package. ``t`` is a
    1-D tensor; the result is float32 of shape ``(len(t), dim)`` (an odd ``dim`` gets a zero last column).
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def resize_pos_embed(
    pos_embed: torch.Tensor, src_grid: tuple[int, int], dst_grid: tuple[int, int], num_extra: int = 2
) -> torch.Tensor:
    """Resize a ``(1, num_extra + Hs*Ws, D)`` position table from token grid ``src_grid`` to ``dst_grid``.

    The first ``num_extra`` rows (the condition tokens: time and class for both class-conditional backbones) are
    copied unchanged; the image rows are resized with bilinear ``F.interpolate(align_corners=False)``, as the
    official 256 -> 512 fine-tune does (docs/backbone.md, "Checkpoints"). Computed in fp32, returned in the
    input dtype; the same tensor comes back when the grids are equal.
    """
    src_h, src_w = src_grid
    if pos_embed.shape[1] != num_extra + src_h * src_w:
        raise ValueError(
            f"pos_embed has {pos_embed.shape[1]} rows, expected {num_extra} extra + {src_h}x{src_w} grid = "
            f"{num_extra + src_h * src_w}"
        )
    if tuple(src_grid) == tuple(dst_grid):
        return pos_embed
    extra, grid = pos_embed[:, :num_extra], pos_embed[:, num_extra:]
    grid = rearrange(grid.float(), "b (h w) d -> b d h w", h=src_h, w=src_w)
    grid = F.interpolate(grid, size=tuple(dst_grid), mode="bilinear", align_corners=False)
    grid = rearrange(grid, "b d h w -> b (h w) d").to(pos_embed.dtype)
    return torch.cat([extra, grid], dim=1)


def to_pair(size: int | tuple[int, int] | list[int], name: str) -> tuple[int, int]:
    """``size`` as ``(H, W)``: an int means a square; ValueError naming the argument ``name`` otherwise."""
    if isinstance(size, int):
        return size, size
    if isinstance(size, (tuple, list)) and len(size) == 2 and all(isinstance(s, int) for s in size):
        return int(size[0]), int(size[1])
    raise ValueError(f"{name} must be an int or a pair (H, W) of ints, got {size!r}")
