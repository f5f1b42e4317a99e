"""Random draws that honour an optional ``torch.Generator`` living on another device than the target tensor.

``torch.randn(..., generator=g, device=d)`` fails when ``g`` is a CPU generator and ``d`` is a GPU. Reproducible
seeding from a CPU generator is what the samplers and the loss want, so draws are made on the generator's device and
moved afterwards.
"""

from __future__ import annotations

import torch

__all__ = ["rand", "randint", "randn"]


def _draw_device(generator: torch.Generator | None, device: torch.device | str) -> torch.device:
    return torch.device(device) if generator is None else generator.device


def randn(
    shape: tuple[int, ...] | torch.Size,
    *,
    device: torch.device | str,
    dtype: torch.dtype = torch.float32,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Standard normal tensor of ``shape`` on ``device``, drawn from ``generator`` when one is given."""
    out = torch.randn(tuple(shape), generator=generator, device=_draw_device(generator, device), dtype=dtype)
    return out.to(device)


def rand(
    shape: tuple[int, ...] | torch.Size,
    *,
    device: torch.device | str,
    dtype: torch.dtype = torch.float32,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Uniform ``[0, 1)`` tensor of ``shape`` on ``device``, drawn from ``generator`` when one is given."""
    out = torch.rand(tuple(shape), generator=generator, device=_draw_device(generator, device), dtype=dtype)
    return out.to(device)


def randint(
    low: int,
    high: int,
    shape: tuple[int, ...] | torch.Size,
    *,
    device: torch.device | str,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Integers uniform on ``{low, ..., high - 1}`` (int64) on ``device``, drawn from ``generator`` if given."""
    out = torch.randint(low, high, tuple(shape), generator=generator, device=_draw_device(generator, device))
    return out.to(device)
