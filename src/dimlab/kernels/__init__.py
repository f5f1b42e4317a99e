"""dimlab's own Triton kernels for the Mamba mixer: the selective scan and the causal depthwise conv1d.

They need no build step (Triton compiles them on first use for the GPU at hand) and work on channel-last
(batch, L, channels) tensors, the layout of DiM's tokens. Each comes with an fp64 reference
(:mod:`dimlab.kernels.reference`) that the tests compare it with, forward and backward; on a machine without a
GPU the tests run the kernels in Triton's interpreter (``TRITON_INTERPRET=1``). See docs/kernels.md.

Importing this package imports Triton; :func:`dimlab.models.scan.triton_available` tells whether that works.
"""

from dimlab.kernels.conv import causal_conv1d
from dimlab.kernels.mixer import mamba_inner
from dimlab.kernels.scan import ScanConfig, get_scan_config, selective_scan, set_scan_config

__all__ = [
    "ScanConfig",
    "causal_conv1d",
    "get_scan_config",
    "mamba_inner",
    "selective_scan",
    "set_scan_config",
]
