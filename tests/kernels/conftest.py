"""Kernel tests: on a CPU-only machine the Triton kernels run in Triton's interpreter (set in tests/conftest.py).

The interpreter executes every unrolled step in Python, so these tests use tiny shapes and a tiny launch
configuration (kernel_cases.TINY) that still takes every path of the kernels: several chunks, the two-level
recompute of the backward and the split of the sequence into segments.
"""

from __future__ import annotations

import pytest

pytest.importorskip("dimlab.kernels", reason="Triton is not installed")


@pytest.fixture
def tiny_config():
    """Use kernel_cases.TINY for the test, then restore the launch configuration."""
    from kernel_cases import TINY

    from dimlab.kernels import scan as kernel_scan

    previous = kernel_scan.set_scan_config(TINY)
    yield TINY
    kernel_scan.set_scan_config(previous)
