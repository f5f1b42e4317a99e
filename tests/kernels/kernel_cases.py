"""Shared pieces of the kernel tests: where they run and how results are compared."""

from __future__ import annotations

import torch

from dimlab.kernels import scan as kernel_scan

#: A GPU runs the kernels compiled; without one they run in Triton's interpreter on CPU tensors.
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
#: States kept every 4 steps, 2 in registers, eager splitting: tiny shapes reach every code path.
TINY = kernel_scan.ScanConfig(t_save=4, t_sub=2, min_segment=2)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in fp64 (the plain difference when b is zero)."""
    a, b = a.double(), b.double()
    scale = b.norm().item()
    diff = (a - b).norm().item()
    return diff / scale if scale > 0 else diff
