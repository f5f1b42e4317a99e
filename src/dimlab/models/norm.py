"""RMSNorm as DiM uses it (learnable weight, eps 1e-5, fp32 statistics) and the adaLN modulation helper."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


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


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation ``x * (1 + scale) + shift``; ``shift``/``scale`` are (B, D) and broadcast over tokens."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)
