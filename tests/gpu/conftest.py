"""Shared set-up of the GPU tests: exact fp32 matrix products for the parity comparisons."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _exact_fp32():
    """TF32 would put 1e-3 errors into the fp32 comparisons."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old
