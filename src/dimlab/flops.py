"""Analytic compute of the DiM and U-ViT backbones: multiply-accumulates (MACs) per forward, model FLOPs per step.

The count (docs/backbone.md, "Compute"): every linear and convolution contributes its MACs, attention its two
``L x L`` matmuls (``2 L^2 D``), and the selective scan ``9 L E N / 2`` MACs (mamba issue #110 counts ``9 B L D N``
FLOPs). Elementwise work (norms, modulation, activations, softmax, the EMA) is not counted, so MFU computed from
these numbers is the usual "model FLOPs utilisation". Training FLOPs are ``3 x 2 x MACs`` per sample (forward plus
a backward of twice the forward); activation checkpointing recomputes the forward but does not change the model
FLOPs, which is the convention of PaLM's MFU.

Why not ``torch.utils.flop_counter`` / fvcore: they do not see inside the mamba-ssm CUDA kernels (the scan and the
causal conv1d are opaque custom ops) and they need a real forward pass, which for DiM-H at 1536 px is not cheap;
the analytic count works from the constructor arguments alone.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dimlab.models.dim import DiM
from dimlab.models.scan_order import skip_pairs
from dimlab.models.uvit import UViT

__all__ = [
    "H100_BF16_DENSE_TFLOPS",
    "H100_BF16_MEASURED_MATMUL_TFLOPS",
    "ForwardCost",
    "backbone_cost",
    "dim_cost",
    "dim_flops",
    "mfu",
    "train_flops",
    "uvit_block_macs",
    "uvit_cost",
    "uvit_flops",
]

#: H100 SXM dense bf16 tensor-core peak from the datasheet (TFLOP/s).
H100_BF16_DENSE_TFLOPS = 989.0
#: bf16 matmul throughput actually reached on an H100 SXM by a large square GEMM (TFLOP/s): the practical ceiling.
H100_BF16_MEASURED_MATMUL_TFLOPS = 790.0

#: The constant of the selective-scan count: 9 FLOPs per (token, channel, state) element, i.e. 4.5 MACs.
SCAN_MACS_PER_ELEMENT = 9 / 2
#: Width of the sinusoid fed to DiM's adaLN-single timestep MLP.
_DIM_ADALN_SINUSOID = 256


@dataclass(frozen=True)
class ForwardCost:
    """MACs of one forward pass for ONE sample, split by component, and the sequence length the blocks see."""

    tokens: int
    macs: dict[str, float] = field(default_factory=dict)

    @property
    def total_macs(self) -> float:
        """Sum of all components (MACs per sample per forward)."""
        return float(sum(self.macs.values()))

    @property
    def gmacs(self) -> float:
        """Total in GMACs (the unit of docs/backbone.md "Compute" and of most papers' "GFLOPs" columns)."""
        return self.total_macs / 1e9

    def flops(self, batch: int = 1, training: bool = True) -> float:
        """Model FLOPs for ``batch`` samples: ``2 x MACs`` per forward, times 3 when ``training`` (fwd + bwd)."""
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        return 2.0 * self.total_macs * batch * (3 if training else 1)


def _resolved_args(cls_path: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """Constructor arguments of the backbone class with ``config`` applied over the defaults."""
    cls = DiM if cls_path == "dim" else UViT
    params = inspect.signature(cls.__init__).parameters
    unknown = sorted(set(config) - set(params) - {"self"})
    if unknown:
        raise ValueError(f"{cls.__name__} config has unknown keys {unknown}; expected constructor arguments")
    defaults = {k: p.default for k, p in params.items() if k != "self" and p.default is not inspect._empty}
    return {**defaults, **dict(config)}


def _grid(args: Mapping[str, Any], input_hw: tuple[int, int] | int | None) -> tuple[int, int]:
    size = args["input_size"] if input_hw is None else input_hw
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    p = args["patch_size"]
    if height % p or width % p:
        raise ValueError(f"input size {height}x{width} is not a multiple of patch_size {p}")
    return height // p, width // p


def dim_cost(config: Mapping[str, Any], input_hw: tuple[int, int] | int | None = None) -> ForwardCost:
    """Forward MACs per sample of a DiM built with constructor ``config``, on an input of ``input_hw`` (H, W).

    ``config`` holds DiM constructor arguments (a preset dict, ``backbone_spec(m)["init_args"]``); missing keys take
    the constructor defaults. ``input_hw`` is the backbone's input (latent) size, default ``config["input_size"]``.
    """
    args = _resolved_args("dim", config)
    gh, gw = _grid(args, input_hw)
    d, depth, n = args["hidden_size"], args["depth"], args["d_state"]
    e = int(args["expand"] * d)
    rank = math.ceil(d / 16)
    k = args["d_conv"]
    pad = k if args["line_pad"] else 0
    separators = k if args["cond_separator"] else 0
    image = gh * gw
    length = 2 + separators + (gh + pad) * (gw + pad)
    c_in = args["in_channels"]
    c_out = args["out_channels"] or c_in
    p = args["patch_size"]
    receivers = len(skip_pairs(depth)) if args["long_skip"] else 0

    macs = {
        "patch_embed": image * d * c_in * p * p,
        "conditioning": _DIM_ADALN_SINUSOID * d + d * d + d * 3 * d + d * 2 * d,
        "local_enhance": 2 * image * d * 9 if args["local_enhance"] else 0,
        "mamba_in_out_proj": depth * length * (d * 2 * e + e * d),
        "mamba_conv1d": depth * length * e * k,
        "mamba_x_dt_proj": depth * length * (e * (rank + 2 * n) + rank * e),
        "selective_scan": depth * length * e * n * SCAN_MACS_PER_ELEMENT,
        "long_skips": receivers * length * 2 * d * d,
        "head": image * d * p * p * c_out,
    }
    return ForwardCost(tokens=length, macs={k: float(v) for k, v in macs.items()})


def uvit_block_macs(hidden_size: int, tokens: int, mlp_ratio: float = 4.0) -> float:
    """MACs of one U-ViT transformer block on ``tokens`` tokens: qkv, the two attention matmuls, proj, MLP."""
    d, length = hidden_size, tokens
    mlp_hidden = int(d * mlp_ratio)
    return float(length * d * 3 * d + 2 * length * length * d + length * d * d + 2 * length * d * mlp_hidden)


def uvit_cost(config: Mapping[str, Any], input_hw: tuple[int, int] | int | None = None) -> ForwardCost:
    """Forward MACs per sample of a U-ViT built with constructor ``config``, on an input of ``input_hw`` (H, W).

    ``depth`` is the total block count (in-blocks + mid-block + out-blocks), as in :class:`dimlab.models.uvit.UViT`.
    """
    args = _resolved_args("uvit", config)
    gh, gw = _grid(args, input_hw)
    d, depth = args["hidden_size"], args["depth"]
    image = gh * gw
    extra = 2 if args["num_classes"] else 1
    length = extra + image
    c_in = args["in_channels"]
    c_out = args["out_channels"] or c_in
    p = args["patch_size"]
    out_blocks = depth // 2 if args["skip"] else 0
    block = uvit_block_macs(d, length, args["mlp_ratio"])
    attention = 2 * length * length * d
    macs = {
        "patch_embed": image * d * c_in * p * p,
        "time_mlp": 2 * 4 * d * d if args["mlp_time_embed"] else 0,
        "block_linears": depth * (block - attention),
        "attention_matmuls": depth * attention,
        "long_skips": out_blocks * length * 2 * d * d,
        "head": length * d * p * p * c_out,
        "final_conv": gh * p * gw * p * c_out * c_out * 9 if args["use_final_conv"] else 0,
    }
    return ForwardCost(tokens=length, macs={k: float(v) for k, v in macs.items()})


def backbone_cost(backbone: Any, input_hw: tuple[int, int] | int | None = None) -> ForwardCost:
    """Forward MACs per sample of a built DiM or UViT module (read from its recorded ``init_args``)."""
    if isinstance(backbone, DiM):
        return dim_cost(backbone.init_args, input_hw)
    if isinstance(backbone, UViT):
        return uvit_cost(backbone.init_args, input_hw)
    raise TypeError(f"no FLOP count for {type(backbone).__qualname__}; expected a DiM or UViT backbone")


def dim_flops(
    config: Mapping[str, Any],
    batch: int,
    input_hw: tuple[int, int] | int | None = None,
    training: bool = True,
) -> float:
    """Model FLOPs of one DiM step on ``batch`` samples: ``2 x MACs x batch``, times 3 for a training step."""
    return dim_cost(config, input_hw).flops(batch, training)


def uvit_flops(
    config: Mapping[str, Any],
    batch: int,
    input_hw: tuple[int, int] | int | None = None,
    training: bool = True,
) -> float:
    """Model FLOPs of one U-ViT step on ``batch`` samples: ``2 x MACs x batch``, times 3 for a training step."""
    return uvit_cost(config, input_hw).flops(batch, training)


def train_flops(cost: ForwardCost, batch: int) -> float:
    """Model FLOPs of one training step (forward + backward) on ``batch`` samples."""
    return cost.flops(batch, training=True)


def mfu(flops_per_second: float, peak_tflops: float = H100_BF16_DENSE_TFLOPS) -> float:
    """Model FLOPs utilisation: achieved FLOP/s over ``peak_tflops`` (TFLOP/s), as a fraction."""
    if peak_tflops <= 0:
        raise ValueError(f"peak_tflops must be > 0, got {peak_tflops}")
    return flops_per_second / (peak_tflops * 1e12)
