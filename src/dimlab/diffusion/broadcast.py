"""Per-sample coefficients broadcast over a batch of tensors (the one reshape every sampler and the loss need)."""

from __future__ import annotations

import torch

__all__ = ["per_sample"]


def per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``values`` of shape (B,) (or (1,)) reshaped to (B, 1, ..., 1) so it scales each sample of ``like``."""
    return values.reshape(-1, *([1] * (like.dim() - 1)))
