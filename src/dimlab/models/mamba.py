"""The Mamba (v1, "simple") mixer with mamba-ssm's parameters, plus selective-scan backend dispatch.

Parameter names, shapes and initialisation follow ``mamba_ssm.modules.mamba_simple.Mamba`` (the mixer DiM
uses; docs/backbone.md "Forward pass" and "Initialisation"), so state dicts move between the two unchanged. What
differs is how the scan runs: ``scan_backend`` picks dimlab's Triton kernels (:mod:`dimlab.kernels`, fused like
mamba-ssm's path), mamba-ssm's fused CUDA path or the pure-PyTorch scan of :mod:`dimlab.models.scan`, and can
be changed after construction (:func:`set_scan_backend`). Importing this module imports neither Triton nor
mamba-ssm: each path imports its kernels on first use.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dimlab.models.scan import BACKENDS, resolve_backend, selective_scan


class Mamba(nn.Module):
    """Mamba selective-state-space mixer: (batch, L, d_model) -> (batch, L, d_model).

    in_proj -> (x, z); x -> causal depthwise conv1d -> SiLU -> x_proj -> (dt, B, C);
    dt -> dt_proj (softplus with its bias inside the scan); y = selective_scan(x, dt, A, B, C, D, z);
    out_proj(y). A = -exp(A_log) (S4D-real init), D is a learned skip.

    Arguments are those of mamba-ssm's Mamba, except ``use_fast_path`` (replaced by ``scan_backend``:
    ``auto``, ``triton``, ``cuda``, ``torch`` or ``reference``). Step-by-step decoding (``inference_params``) is not
    implemented: DiM never decodes token by token.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: float = 2,
        dt_rank: int | str = "auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init: str = "random",
        dt_scale: float = 1.0,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        scan_backend: str = "auto",
        layer_idx: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        if dt_init not in ("random", "constant"):
            raise ValueError(f"Mamba: dt_init must be 'random' or 'constant', got {dt_init!r}")
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"Mamba: need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.expand = expand
        self.d_inner = int(expand * d_model)
        if dt_rank == "auto":
            dt_rank = math.ceil(d_model / 16)
        elif not isinstance(dt_rank, int) or dt_rank < 1:
            raise ValueError(f"Mamba: dt_rank must be 'auto' or a positive int, got {dt_rank!r}")
        self.dt_rank = dt_rank
        self.layer_idx = layer_idx
        self.scan_backend = scan_backend

        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias, **factory)
        self.conv1d = nn.Conv1d(
            self.d_inner,
            self.d_inner,
            kernel_size=d_conv,
            groups=self.d_inner,
            padding=d_conv - 1,
            bias=conv_bias,
            **factory,
        )
        self.activation = "silu"
        self.act = nn.SiLU()
        self.x_proj = nn.Linear(self.d_inner, dt_rank + 2 * d_state, bias=False, **factory)
        self.dt_proj = nn.Linear(dt_rank, self.d_inner, bias=True, **factory)
        self._init_dt_proj(dt_init, dt_scale, dt_min, dt_max, dt_init_floor)

        # S4D-real: A[:, n] = -(n + 1) for every channel. A_log and D stay fp32 whatever `dtype` is,
        # as in mamba-ssm.
        a = torch.arange(1, d_state + 1, dtype=torch.float32, device=device).repeat(self.d_inner, 1)
        self.A_log = nn.Parameter(torch.log(a))
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.ones(self.d_inner, device=device))
        self.D._no_weight_decay = True

        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **factory)

    @property
    def scan_backend(self) -> str:
        """Which selective-scan backend forward() uses: 'auto', 'triton', 'cuda', 'torch' or 'reference'."""
        return self._scan_backend

    @scan_backend.setter
    def scan_backend(self, name: str) -> None:
        if name not in BACKENDS:
            raise ValueError(f"Mamba: scan_backend must be one of {', '.join(BACKENDS)}, got {name!r}")
        self._scan_backend = name

    def _init_dt_proj(self, dt_init, dt_scale, dt_min, dt_max, dt_init_floor) -> None:
        """dt_proj init from mamba-ssm: weight U(+-dt_rank^-0.5 * dt_scale) (or constant), and a bias
        whose softplus is log-uniform in [dt_min, dt_max] (floored at dt_init_floor)."""
        std = self.dt_rank**-0.5 * dt_scale
        with torch.no_grad():
            if dt_init == "constant":
                self.dt_proj.weight.fill_(std)
            else:
                self.dt_proj.weight.uniform_(-std, std)
            log_dt = torch.rand(self.d_inner, device=self.dt_proj.bias.device, dtype=torch.float32)
            dt = torch.exp(log_dt * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
            dt = dt.clamp(min=dt_init_floor)
            # inverse of softplus: dt + log(1 - exp(-dt))
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        # keeps the bias out of generic re-initialisation (DiM's _init_weights_mamba zeroes Linear biases)
        self.dt_proj.bias._no_reinit = True

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Mix along the sequence: hidden_states (batch, L, d_model) -> (batch, L, d_model)."""
        if hidden_states.dim() != 3 or hidden_states.shape[-1] != self.d_model:
            raise ValueError(
                f"Mamba: expected input (batch, L, {self.d_model}), got shape {tuple(hidden_states.shape)}"
            )
        backend = resolve_backend(self.scan_backend, hidden_states.device)
        if backend == "triton":
            return self._forward_triton(hidden_states)
        if backend == "cuda":
            return self._forward_cuda(hidden_states)
        return self._forward_torch(hidden_states, backend)

    def _forward_triton(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """dimlab's fused Triton path: in_proj here, then conv, projections, scan and out_proj in one op that
        works on the (batch, L, channels) tokens as they are (:func:`dimlab.kernels.mixer.mamba_inner`)."""
        from dimlab.kernels.mixer import mamba_inner

        return mamba_inner(
            self.in_proj(hidden_states),
            self.conv1d.weight[:, 0, :],
            self.conv1d.bias,
            self.x_proj.weight,
            self.dt_proj.weight,
            self.out_proj.weight,
            self.out_proj.bias,
            -torch.exp(self.A_log.float()),
            self.D.float(),
            self.dt_proj.bias.float(),
        )

    def _forward_torch(self, hidden_states: torch.Tensor, backend: str) -> torch.Tensor:
        """Unfused path: plain PyTorch ops around the 'torch' or 'reference' scan."""
        xz = self.in_proj(hidden_states).transpose(1, 2)  # (b, 2E, L)
        x, z = xz.chunk(2, dim=1)
        x = self.act(self._causal_conv(x))
        x_dbl = self.x_proj(x.transpose(1, 2))  # (b, L, R + 2N)
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.linear(dt, self.dt_proj.weight)  # the bias goes into the scan (delta_bias), as in mamba-ssm
        A = -torch.exp(_at_least_fp32(self.A_log))
        y = selective_scan(
            x,
            dt.transpose(1, 2),
            A,
            B.transpose(1, 2),
            C.transpose(1, 2),
            _at_least_fp32(self.D),
            z=z,
            delta_bias=_at_least_fp32(self.dt_proj.bias),
            delta_softplus=True,
            backend=backend,
        )
        return self.out_proj(y.transpose(1, 2))

    def _causal_conv(self, x: torch.Tensor) -> torch.Tensor:
        """Causal depthwise conv1d of x (b, E, L) with self.conv1d's weight and bias, as d_conv shifted
        multiply-adds in fp32 (or fp64), returned in x's dtype.

        Same result as ``self.conv1d(x)[..., :L]``, but PyTorch's CPU depthwise conv falls back to one
        slow convolution per channel (seconds for DiM's 1024+ channels, worse in bf16); d_conv (3-4)
        elementwise passes are fast on every device and dtype.
        """
        length = x.shape[-1]
        weight = _at_least_fp32(self.conv1d.weight[:, 0, :])  # (E, k); tap k-1 sees the current step
        padded = F.pad(x.to(weight.dtype), (self.d_conv - 1, 0))
        out = padded[..., :length] * weight[:, :1]
        for tap in range(1, self.d_conv):
            out = out + padded[..., tap : tap + length] * weight[:, tap : tap + 1]
        if self.conv1d.bias is not None:
            out = out + _at_least_fp32(self.conv1d.bias)[:, None]
        return out.to(x.dtype)

    def _forward_cuda(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """mamba-ssm's fused path (``mamba_inner_fn``: causal-conv1d + selective-scan kernels)."""
        from mamba_ssm.ops.selective_scan_interface import mamba_inner_fn

        batch, length, _ = hidden_states.shape
        # (2E, b*L) viewed as (b, 2E, L): L is the contiguous dim, the layout the kernels want
        xz = (self.in_proj.weight @ hidden_states.reshape(batch * length, -1).t()).view(-1, batch, length)
        xz = xz.transpose(0, 1)
        if self.in_proj.bias is not None:
            xz = xz + self.in_proj.bias.to(dtype=xz.dtype)[:, None]
        A = -torch.exp(self.A_log.float())
        return mamba_inner_fn(
            xz,
            self.conv1d.weight,
            self.conv1d.bias,
            self.x_proj.weight,
            self.dt_proj.weight,
            self.out_proj.weight,
            self.out_proj.bias,
            A,
            None,
            None,
            self.D.float(),
            delta_bias=self.dt_proj.bias.float(),
            delta_softplus=True,
        )

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, d_state={self.d_state}, d_conv={self.d_conv}, "
            f"expand={self.expand}, dt_rank={self.dt_rank}, scan_backend={self.scan_backend!r}"
        )


def _at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    """fp32 copy of a low-precision tensor, fp64 left alone (mamba-ssm uses .float(); fp64 is for tests)."""
    return t if t.dtype == torch.float64 else t.float()


def set_scan_backend(module: nn.Module, name: str) -> int:
    """Set ``scan_backend`` on every :class:`Mamba` inside ``module``; returns how many were set."""
    if name not in BACKENDS:
        raise ValueError(f"set_scan_backend: name must be one of {', '.join(BACKENDS)}, got {name!r}")
    count = 0
    for child in module.modules():
        if isinstance(child, Mamba):
            child.scan_backend = name
            count += 1
    return count
