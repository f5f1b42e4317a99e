"""DiM (Diffusion Mamba, arXiv 2405.14224) backbone: faithful to the released code, with switchable components.

The forward pass follows the released code step by step (docs/backbone.md, "Forward pass"); the four paper components (multi-scan, long
skips, padding tokens, local feature enhancement) are independent constructor switches, and a switch that is off
removes its parameters. docs/backbone.md lists the deviations from the official code.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint

from dimlab.models.layers import RMSNorm, TimestepMLP, modulate, resize_pos_embed, timestep_sinusoid, to_pair
from dimlab.models.mamba import Mamba
from dimlab.models.permute import permute_tokens
from dimlab.models.scan_order import (
    PAD_FILLS,
    GridIndexPlan,
    PaddedGrid,
    block_schedule,
    build_grid_plan,
    skip_pairs,
)
from dimlab.models.spec import record_init_args
from dimlab.models.weight_decay import no_weight_decay_names

#: Width of the sinusoid fed to the adaLN-single timestep MLP (diffusers ``Timesteps(256, flip_sin_to_cos=True)``).
ADALN_SINUSOID_DIM = 256
#: Conditioning tokens in front of the sequence: the time token and the class token.
NUM_COND_TOKENS = 2
SKIP_FUSIONS = ("auto", "concat", "sum")


def _keeps_init(param: nn.Parameter) -> bool:
    """Whether a parameter is marked to keep its own initialisation (mamba-ssm's ``_no_reinit``: ``dt_proj.bias``)."""
    return bool(getattr(param, "_no_reinit", False))


class AdaLNSingle(nn.Module):
    """PixArt-style adaLN-single: one (B, 3D) modulation vector shared by every block (forward step 3).

    ``e = TimestepMLP(sinusoid_256(t)) + class_table(y)``; output ``Linear(D -> 3D)(SiLU(e))``. The class
    table has ``num_classes + 1`` rows (the last is the null class) and no internal label dropout.
    """

    def __init__(self, hidden_size: int, num_classes: int) -> None:
        super().__init__()
        self.timestep_mlp = TimestepMLP(ADALN_SINUSOID_DIM, hidden_size)
        self.class_table = nn.Embedding(num_classes + 1, hidden_size)
        self.linear = nn.Linear(hidden_size, 3 * hidden_size)

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(B,) timesteps and (B,) labels -> (B, 3D) shift/scale/gate vector."""
        mlp_in = timestep_sinusoid(t, ADALN_SINUSOID_DIM).to(self.timestep_mlp.linear_1.weight.dtype)
        e = self.timestep_mlp(mlp_in) + self.class_table(y)
        return self.linear(F.silu(e))


class SkipFusion(nn.Module):
    """U-ViT long-skip fusion: ``Linear(2D -> D)(concat[h, skip])`` or ``Linear_a(h) + Linear_b(skip)``.

    The official code picks concat for D <= 512 and the two-linear sum above (forward step 8).
    """

    def __init__(self, hidden_size: int, mode: str) -> None:
        super().__init__()
        if mode not in ("concat", "sum"):
            raise ValueError(f"skip fusion mode must be 'concat' or 'sum', got {mode!r}")
        self.mode = mode
        if mode == "concat":
            self.concat_proj = nn.Linear(2 * hidden_size, hidden_size)
        else:
            self.hidden_proj = nn.Linear(hidden_size, hidden_size)
            self.skip_proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, h: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """Fuse the residual stream ``h`` with the incoming ``skip`` (same shape, same token order)."""
        if self.mode == "concat":
            dtype = self.concat_proj.weight.dtype
            return self.concat_proj(torch.cat([h.to(dtype), skip.to(dtype)], dim=-1))
        dtype = self.hidden_proj.weight.dtype
        return self.hidden_proj(h.to(dtype)) + self.skip_proj(skip.to(dtype))


class DiMBlock(nn.Module):
    """One DiM block: [skip fusion] -> scan switch -> RMSNorm -> adaLN modulate -> Mamba -> (1 + gate) residual.

    ``h_{l+1} = h_l + (1 + g_l) * Mamba(RMSNorm(h_l) * (1 + s_l) + b_l)`` in this block's scan order, with the
    residual stream ``h`` kept in fp32.
    """

    def __init__(
        self,
        hidden_size: int,
        d_state: int,
        d_conv: int,
        expand: int,
        scan_backend: str,
        skip_fusion: str | None,
    ) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.norm = RMSNorm(hidden_size, eps=1e-5)
        # Per-block adaLN-single table, added to the shared (B, 3D) vector: rows are shift, scale, gate.
        self.scale_shift_table = nn.Parameter(torch.randn(3, hidden_size) / hidden_size**0.5)
        self.mixer = Mamba(
            hidden_size, d_state=d_state, d_conv=d_conv, expand=expand, scan_backend=scan_backend
        )
        self.skip_fusion = SkipFusion(hidden_size, skip_fusion) if skip_fusion is not None else None

    def forward(
        self,
        h: torch.Tensor,
        tmod: torch.Tensor,
        skip: torch.Tensor | None = None,
        order: torch.Tensor | None = None,
        inverse: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Advance the fp32 stream ``h`` (B, L, D) by one block.

        ``tmod`` is the (B, 3D) adaLN-single vector, ``skip`` the incoming long-skip tensor (receiving blocks
        only; it is in the previous block's order, like ``h``), ``order`` the gather index into this block's
        scan order (None = unchanged) and ``inverse`` its inverse permutation, which makes the gather's backward
        a gather too (:func:`dimlab.models.permute.permute_tokens`).
        """
        if self.skip_fusion is not None:
            if skip is None:
                raise ValueError("this DiM block receives a long skip but no skip tensor was given")
            h = self.skip_fusion(h, skip).float()
        if order is not None:
            h = permute_tokens(h, order, inverse)
        shift, scale, gate = (
            self.scale_shift_table.unsqueeze(0) + tmod.view(-1, 3, self.hidden_size)
        ).unbind(1)
        out = self.mixer(modulate(self.norm(h), shift, scale))
        return h + ((1 + gate).unsqueeze(1) * out).float()


class DiM(nn.Module):
    """The DiM denoiser: ``forward(x, t, y=None) -> eps`` with ``x`` (B, C, H, W), ``t`` (B,), ``y`` (B,).

    Faithful defaults reproduce the released model (parameter counts equal the official S/L/H). Switches:

    * ``multi_scan``: number of scan patterns cycled in the mirrored schedule (1 = every block row-forward,
      2 = row fwd/bwd, 3 = + column-forward, 4 = all four, the paper's MS on).
    * ``long_skip``: U-ViT long skips, blocks 1..M-1 -> M..N-1 (``skip_fusion`` "auto" = concat for
      ``hidden_size <= 512``, two summed linears above; or force "concat" / "sum").
    * ``line_pad``: ``d_conv`` learnable pad vectors at each row end plus ``d_conv`` pad rows at the bottom,
      filled per ``pad_fill`` ("lateral" for the 256 models, "rho_pad" for the 512 fine-tune).
    * ``cond_separator``: ``d_conv`` learnable separator tokens between the cond tokens and the image tokens.
      (The official ``use_pad_token`` ties this and ``line_pad`` together.)
    * ``local_enhance``: the two replacing 3x3 depthwise convs after patchify and before the head.

    ``forward`` accepts any H, W that are multiples of ``patch_size`` (the position table is resized bilinearly
    for other grids) and an optional ``skip_scale`` multiplying each receiving block's incoming skip.
    """

    @record_init_args
    def __init__(
        self,
        input_size: int | tuple[int, int] = 32,
        patch_size: int = 2,
        in_channels: int = 3,
        out_channels: int | None = None,
        hidden_size: int = 512,
        depth: int = 25,
        num_classes: int = 10,
        d_state: int = 16,
        d_conv: int = 3,
        expand: int = 2,
        multi_scan: int = 4,
        long_skip: bool = True,
        line_pad: bool = True,
        cond_separator: bool = True,
        local_enhance: bool = True,
        pad_fill: str = "lateral",
        skip_fusion: str = "auto",
        scan_backend: str = "auto",
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        height, width = to_pair(input_size, "input_size")
        if patch_size < 1 or height % patch_size or width % patch_size:
            raise ValueError(
                f"input_size {height}x{width} must be a multiple of patch_size {patch_size} in both dimensions"
            )
        if pad_fill not in PAD_FILLS:
            raise ValueError(f"pad_fill must be one of {PAD_FILLS}, got {pad_fill!r}")
        if skip_fusion not in SKIP_FUSIONS:
            raise ValueError(f"skip_fusion must be one of {SKIP_FUSIONS}, got {skip_fusion!r}")
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0 (the null class is added on top), got {num_classes}")
        if d_conv < 1:
            raise ValueError(f"d_conv must be >= 1 (it is also the pad/separator length), got {d_conv}")
        if hidden_size < 2 or in_channels < 1:
            raise ValueError(
                f"hidden_size must be >= 2 and in_channels >= 1, got {hidden_size}, {in_channels}"
            )

        self.patch_size = patch_size
        self.in_channels = in_channels
        self.out_channels = out_channels if out_channels is not None else in_channels
        self.hidden_size = hidden_size
        self.depth = depth
        self.num_classes = num_classes
        self.grid_size = (height // patch_size, width // patch_size)
        self.pad_fill = pad_fill
        self.line_pad_len = d_conv if line_pad else 0
        self.num_separators = d_conv if cond_separator else 0
        self.gradient_checkpointing = gradient_checkpointing
        self.schedule = block_schedule(depth, multi_scan)
        fusion = ("concat" if hidden_size <= 512 else "sum") if skip_fusion == "auto" else skip_fusion
        self.skip_fusion_mode = fusion if long_skip else None
        pairs = skip_pairs(depth) if long_skip else []
        self._skip_sources = frozenset(src for src, _ in pairs)
        self._skip_receivers = {dst: k for k, (_, dst) in enumerate(pairs)}

        # Embedding of the input and the conditions.
        self.patch_embed = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size)
        num_pos = NUM_COND_TOKENS + self.grid_size[0] * self.grid_size[1]
        self.pos_embed = nn.Parameter(torch.zeros(1, num_pos, hidden_size))
        self.adaln = AdaLNSingle(hidden_size, num_classes)
        self.label_embed = nn.Embedding(num_classes + 1, hidden_size)  # class token and final-layer condition
        if cond_separator:
            self.separator_tokens = nn.Parameter(torch.randn(d_conv, hidden_size) * 0.02)
        if line_pad:
            self.line_pad_tokens = nn.Parameter(torch.randn(d_conv, hidden_size) * 0.02)
        if local_enhance:
            self.local_enhance_in = nn.Conv2d(hidden_size, hidden_size, 3, padding=1, groups=hidden_size)
            self.local_enhance_out = nn.Conv2d(hidden_size, hidden_size, 3, padding=1, groups=hidden_size)

        self.blocks = nn.ModuleList(
            DiMBlock(
                hidden_size,
                d_state=d_state,
                d_conv=d_conv,
                expand=expand,
                scan_backend=scan_backend,
                skip_fusion=fusion if b in self._skip_receivers else None,
            )
            for b in range(depth)
        )

        self.final_norm = RMSNorm(hidden_size, eps=1e-5)
        self.final_modulation = nn.Linear(hidden_size, 2 * hidden_size)
        self.final_proj = nn.Linear(hidden_size, patch_size * patch_size * self.out_channels)

        self._plans: dict[tuple[int, int, str], GridIndexPlan] = {}
        # The native grid's plan is built now, on the CPU: inside a torch.compile trace its construction is
        # data-dependent (fullgraph fails, the default mode breaks the graph), while copying it to a device is not.
        with torch.device("cpu"):  # also when the model is built on the meta device
            self.index_plan(self.grid_size)
        self._pos_cache: dict[tuple[Any, ...], torch.Tensor] = {}
        self._init_weights()

    # ------------------------------------------------------------------------------------------ construction
    def _init_weights(self) -> None:
        """Initialisation of the released model (docs/backbone.md, "Initialisation").

        Linear biases are zeroed except Mamba's ``dt_proj.bias``; embedding tables ~ N(0, 0.02); each mixer's
        ``out_proj.weight`` is re-drawn kaiming-uniform(a=sqrt 5) and divided by sqrt(depth); the timestep MLP
        weights ~ N(0, 0.02). Everything else keeps its PyTorch default or the value set in ``__init__``
        (pos-embed 0, pad/separator tokens 0.02*randn, scale_shift_table randn/sqrt D, norms 1). There is no
        zero-init anywhere (not adaLN-Zero).
        """
        for module in self.modules():
            if isinstance(module, nn.Linear) and module.bias is not None and not _keeps_init(module.bias):
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=0.02)
        for block in self.blocks:
            out_proj = block.mixer.out_proj.weight
            nn.init.kaiming_uniform_(out_proj, a=math.sqrt(5))
            with torch.no_grad():
                out_proj /= math.sqrt(self.depth)
        for layer in (self.adaln.timestep_mlp.linear_1, self.adaln.timestep_mlp.linear_2):
            nn.init.normal_(layer.weight, std=0.02)

    @property
    def num_skip_receivers(self) -> int:
        """Number of blocks that receive a long skip (the length of ``skip_scale``); 0 with skips off."""
        return len(self._skip_receivers)

    def no_weight_decay_names(self) -> set[str]:
        """Parameter names an optimizer would usually exempt from weight decay.

        Norm weights, embedding tables, the position table, pad/separator tokens, biases and Mamba's ``A_log``
        and ``D``. (The official recipes decay everything; the lead's optimizer decides.)
        """
        return no_weight_decay_names(
            self, module_types=(nn.Embedding,), names=("pos_embed", "separator_tokens", "line_pad_tokens")
        )

    # ------------------------------------------------------------------------------------------ grid caches
    def grid_for(self, height: int, width: int) -> tuple[int, int]:
        """Token grid of an (height, width) input; ValueError when either is not a multiple of the patch size."""
        p = self.patch_size
        if height % p or width % p or height < p or width < p:
            raise ValueError(
                f"DiM input size {height}x{width} is not a multiple of patch_size {p}: height and width must be "
                f"positive multiples of {p}"
            )
        return height // p, width // p

    def index_plan(self, grid: tuple[int, int], device: torch.device | str = "cpu") -> GridIndexPlan:
        """Index tensors for token grid ``grid`` (rows, cols) on ``device``, built once and cached."""
        device = torch.device(device)
        key = (grid[0], grid[1], str(device))
        plan = self._plans.get(key)
        if plan is None:
            cpu_key = (grid[0], grid[1], "cpu")
            cpu_plan = self._plans.get(cpu_key)
            if cpu_plan is None:
                cpu_plan = build_grid_plan(
                    PaddedGrid(grid[0], grid[1], self.line_pad_len),
                    self.schedule,
                    num_cond=NUM_COND_TOKENS,
                    num_separators=self.num_separators,
                    fill=self.pad_fill,
                )
                self._plans[cpu_key] = cpu_plan
            plan = cpu_plan.to(device)
            self._plans[key] = plan
        return plan

    def pos_embed_for(self, grid: tuple[int, int]) -> torch.Tensor:
        """Position table for ``grid``, bilinearly resized from the stored grid when they differ.

        Resized tables are cached per grid while they cannot carry gradient (inference); the cache key includes
        the parameter's version counter, so an in-place update invalidates it. Inside a ``torch.compile`` trace
        the table is resized in the graph (the version counter is not traceable, and the resize is a few
        microseconds of a compiled NFE).
        """
        if tuple(grid) == self.grid_size:
            return self.pos_embed
        if torch.compiler.is_compiling() or (torch.is_grad_enabled() and self.pos_embed.requires_grad):
            return resize_pos_embed(self.pos_embed, self.grid_size, grid, NUM_COND_TOKENS)
        p = self.pos_embed
        key = (grid, p.device, p.dtype, p._version)
        cached = self._pos_cache.get(key)
        if cached is None:
            self._pos_cache = {k: v for k, v in self._pos_cache.items() if k[1:] == key[1:]}
            cached = resize_pos_embed(p.detach(), self.grid_size, grid, NUM_COND_TOKENS)
            self._pos_cache[key] = cached
        return cached

    # ------------------------------------------------------------------------------------------ forward
    def _skip_scale_for(self, skip_scale: torch.Tensor | None, batch: int) -> torch.Tensor | None:
        if skip_scale is None:
            return None
        if self.num_skip_receivers == 0:
            raise ValueError("skip_scale was given but this DiM has no long skips (long_skip=False)")
        r = self.num_skip_receivers
        if tuple(skip_scale.shape) not in ((r,), (1, r), (batch, r)):
            raise ValueError(
                f"skip_scale must have shape ({r},), (1, {r}) or ({batch}, {r}) (one factor per receiving "
                f"block), got {tuple(skip_scale.shape)}"
            )
        return skip_scale

    def _depthwise(self, conv: nn.Conv2d, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        image = rearrange(tokens, "b (h w) d -> b d h w", h=grid[0], w=grid[1]).to(conv.weight.dtype)
        return rearrange(conv(image), "b d h w -> b (h w) d")

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor | float,
        y: torch.Tensor | None = None,
        *,
        skip_scale: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict the noise for ``x`` (B, C, H, W) at timesteps ``t`` (B,) or scalar, labels ``y`` (B,).

        ``y=None`` means the null class (index ``num_classes``). ``skip_scale`` (R,), (1, R) or (B, R), with
        R = ``num_skip_receivers``, multiplies the skip arriving at the k-th receiving block (k = 0 is the first
        decoder block, nearest the middle).
        """
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"DiM expects x of shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        batch = x.shape[0]
        grid = self.grid_for(x.shape[2], x.shape[3])
        plan = self.index_plan(grid, x.device)
        t = torch.as_tensor(t, device=x.device)
        t = t.expand(batch) if t.ndim == 0 else t
        if y is None:
            y = torch.full((batch,), self.num_classes, dtype=torch.long, device=x.device)
        skip_scale = self._skip_scale_for(skip_scale, batch)

        # 1. Patchify, cond tokens, learnable position table (steps 2, 4, 5).
        patches = self.patch_embed(x.to(self.patch_embed.weight.dtype)).flatten(2).transpose(1, 2)
        time_token = timestep_sinusoid(t, self.hidden_size)
        label_vec = self.label_embed(y)
        seq = torch.cat([time_token.unsqueeze(1), label_vec.unsqueeze(1), patches], dim=1)
        seq = seq + self.pos_embed_for(grid)
        cond, image = seq[:, :NUM_COND_TOKENS], seq[:, NUM_COND_TOKENS:]
        tmod = self.adaln(t, y)

        # 2. First local-enhancement conv (replaces the tokens), pads and separators, in one gather (step 6).
        if hasattr(self, "local_enhance_in"):
            image = self._depthwise(self.local_enhance_in, image, grid)
        parts = [cond.float()]
        if self.num_separators:
            parts.append(self.separator_tokens.float().expand(batch, -1, -1))
        parts.append(image.float())
        if self.line_pad_len:
            parts.append(self.line_pad_tokens.float().expand(batch, -1, -1))
        h = torch.cat(parts, dim=1).index_select(1, plan.assemble)

        # 3. Blocks with the scan switch before each and long skips (steps 7-8).
        skips: list[torch.Tensor] = []
        for b, block in enumerate(self.blocks):
            skip = None
            k = self._skip_receivers.get(b)
            if k is not None:
                skip = skips.pop()
                if skip_scale is not None:
                    factor = skip_scale[..., k]
                    skip = skip * (factor.view(-1, 1, 1) if factor.ndim else factor)
            order, inverse = plan.transitions[b], plan.inverse_transitions[b]
            if self.gradient_checkpointing and torch.is_grad_enabled():
                h = checkpoint(block, h, tmod, skip, order, inverse, use_reentrant=False)
            else:
                h = block(h, tmod, skip, order, inverse)
            if b in self._skip_sources:
                skips.append(h)

        # 4. Unpad, second conv, final layer, unpatchify (steps 9-12).
        out = h.index_select(1, plan.extract)
        if hasattr(self, "local_enhance_out"):
            out = self._depthwise(self.local_enhance_out, out, grid)
        final_cond = (time_token + label_vec).to(self.final_modulation.weight.dtype)
        shift, scale = self.final_modulation(F.silu(final_cond)).chunk(2, dim=-1)
        out = modulate(self.final_norm(out), shift, scale)
        out = self.final_proj(out.to(self.final_proj.weight.dtype))
        p = self.patch_size
        return rearrange(out, "b (h w) (p q c) -> b c (h p) (w q)", h=grid[0], w=grid[1], p=p, q=p)
