"""U-ViT transformer baseline (Bao et al., "All are Worth Words", CVPR 2023) with DiM's forward signature.

U-ViT treats every input as a token: a time token, a class token (class-conditional models only) and the image
patches. A stack of pre-LN transformer blocks is split into in-blocks, one mid-block and out-blocks; each out-block
fuses the output of its mirrored in-block through a long skip (concat + ``Linear(2D, D)``). A final LayerNorm and a
linear layer give the patch pixels, which are unpatchified and optionally passed through a 3x3 conv.

Module and parameter names follow the reference implementation (``baofff/U-ViT``, ``libs/uvit.py``) so that its
released state dicts load with ``load_state_dict`` (the label table of ``num_classes + 1`` rows matches U-ViT's
``num_classes=1001``). Differences from the reference are listed in ``docs/uvit.md``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint

from dimlab.models.layers import resize_pos_embed, timestep_sinusoid, to_pair
from dimlab.models.presets import UVIT_PRESETS  # noqa: F401 - moved to the presets table; importable here for one release
from dimlab.models.spec import record_init_args
from dimlab.models.weight_decay import no_weight_decay_names

__all__ = ["UVIT_PRESETS", "UViT", "UViTBlock"]


class Attention(nn.Module):
    """Multi-head self-attention through ``F.scaled_dot_product_attention`` (flash / memory-efficient kernels)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = False) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attend over all tokens of ``x`` (B, L, D); no mask, no dropout."""
        q, k, v = rearrange(self.qkv(x), "b l (k h d) -> k b h l d", k=3, h=self.num_heads).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(rearrange(out, "b h l d -> b l (h d)"))


class Mlp(nn.Module):
    """Transformer feed-forward layer: ``Linear -> GELU (exact) -> Linear``, both with bias."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the two-layer MLP token-wise."""
        return self.fc2(self.act(self.fc1(x)))


class UViTBlock(nn.Module):
    """Pre-LN transformer block with an optional long-skip input fused by ``Linear(2D, D)`` on the concat."""

    def __init__(
        self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = False, skip: bool = False
    ) -> None:
        super().__init__()
        self.skip_linear = nn.Linear(2 * dim, dim) if skip else None
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        """Fuse ``skip`` (required exactly when the block was built with ``skip=True``), then attention and MLP."""
        if self.skip_linear is not None:
            if skip is None:
                raise ValueError("this UViTBlock was built with skip=True but got no skip tensor")
            x = self.skip_linear(torch.cat([x, skip], dim=-1))
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    """Non-overlapping patch embedding: ``Conv2d(C, D, p, stride=p)`` flattened row-major to (B, Hp*Wp, D)."""

    def __init__(self, patch_size: int, in_channels: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embed the patches of ``x`` (B, C, H, W) as tokens (B, Hp*Wp, D)."""
        return rearrange(self.proj(x), "b d h w -> b (h w) d")


class UViT(nn.Module):
    """U-ViT noise-prediction backbone: ``forward(x, t, y=None) -> eps`` with the same signature as DiM.

    Args:
        input_size: spatial size of the inputs the positional table is built for (int or (H, W)). Other sizes that
            are multiples of ``patch_size`` work at run time through bilinear resizing of the table.
        patch_size: patch side p.
        in_channels: channels C of ``x``.
        out_channels: channels of the prediction (default ``in_channels``).
        hidden_size: token width D.
        depth: total number of transformer blocks, odd: ``(depth - 1) // 2`` in-blocks, one mid-block and as many
            out-blocks. This is the paper's "#Layers" (13 / 21 / 29); U-ViT's configs pass ``depth - 1``.
        num_heads: attention heads (must divide ``hidden_size``).
        mlp_ratio: MLP hidden width as a multiple of D.
        qkv_bias: bias on the fused qkv projection (False in every U-ViT preset).
        mlp_time_embed: pass the time sinusoid through ``Linear(D, 4D), SiLU, Linear(4D, D)``; otherwise the time
            token is the fixed sinusoid.
        num_classes: number of real classes. The label table has ``num_classes + 1`` rows and id ``num_classes`` is
            the null ("unconditional") class, used when ``y`` is None. 0 or None builds an unconditional model with
            no class token, which ignores ``y``.
        use_final_conv: 3x3 conv on the unpatchified output (U-ViT's ``conv``).
        skip: long skip connections from in-blocks to out-blocks.
        gradient_checkpointing: recompute each block in the backward pass (``use_reentrant=False``).
    """

    @record_init_args
    def __init__(
        self,
        input_size: int | tuple[int, int] = 32,
        patch_size: int = 2,
        in_channels: int = 3,
        out_channels: int | None = None,
        hidden_size: int = 512,
        depth: int = 13,
        num_heads: int = 8,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        mlp_time_embed: bool = False,
        num_classes: int | None = 10,
        use_final_conv: bool = True,
        skip: bool = True,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        height, width = to_pair(input_size, "input_size")
        if patch_size < 1 or height % patch_size or width % patch_size:
            raise ValueError(
                f"input_size {height}x{width} must be a multiple of patch_size {patch_size} (a positive int)"
            )
        if depth < 1 or depth % 2 == 0:
            raise ValueError(
                f"depth must be a positive odd number (in-blocks + mid-block + out-blocks), got {depth}"
            )
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
        if num_classes is not None and num_classes < 0:
            raise ValueError(f"num_classes must be >= 0 or None (0/None = unconditional), got {num_classes}")

        self.patch_size = patch_size
        self.in_channels = in_channels
        self.out_channels = out_channels or in_channels
        self.hidden_size = hidden_size
        self.num_classes = num_classes or 0
        self.grid_size = (height // patch_size, width // patch_size)
        self.gradient_checkpointing = gradient_checkpointing

        self.patch_embed = PatchEmbed(patch_size, in_channels, hidden_size)
        self.time_embed = (
            nn.Sequential(
                nn.Linear(hidden_size, 4 * hidden_size), nn.SiLU(), nn.Linear(4 * hidden_size, hidden_size)
            )
            if mlp_time_embed
            else nn.Identity()
        )
        self.label_emb = nn.Embedding(self.num_classes + 1, hidden_size) if self.num_classes else None
        self.num_extra_tokens = 2 if self.num_classes else 1
        num_patches = self.grid_size[0] * self.grid_size[1]
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_extra_tokens + num_patches, hidden_size))

        def make_block(with_skip: bool) -> UViTBlock:
            return UViTBlock(hidden_size, num_heads, mlp_ratio, qkv_bias, skip=with_skip)

        half = depth // 2
        self.in_blocks = nn.ModuleList([make_block(False) for _ in range(half)])
        self.mid_block = make_block(False)
        self.out_blocks = nn.ModuleList([make_block(skip) for _ in range(half)])

        self.norm = nn.LayerNorm(hidden_size)
        self.decoder_pred = nn.Linear(hidden_size, patch_size * patch_size * self.out_channels)
        self.final_layer = (
            nn.Conv2d(self.out_channels, self.out_channels, 3, padding=1) if use_final_conv else nn.Identity()
        )
        self._init_weights()

    def _init_weights(self) -> None:
        # U-ViT's init: trunc-normal(0.02) pos-embed and Linear weights (bounds +-2 absolute, as in timm), zero
        # Linear biases, LayerNorm (1, 0). Convs and the label table keep PyTorch defaults, as in the reference.
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def no_weight_decay_names(self) -> set[str]:
        """Names of parameters usually excluded from weight decay: the pos-embed, LayerNorm params and biases."""
        return no_weight_decay_names(self, names=("pos_embed",))

    def _check_input(self, x: torch.Tensor) -> tuple[int, int]:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"UViT expects x of shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        height, width = x.shape[-2:]
        p = self.patch_size
        if height % p or width % p:
            raise ValueError(
                f"input size {height}x{width} is not a multiple of patch_size {p}: H and W must be multiples of {p}"
            )
        return height // p, width // p

    def _time_tensor(self, t: torch.Tensor | float, batch: int, device: torch.device) -> torch.Tensor:
        t = torch.as_tensor(t, device=device)
        if t.ndim == 0:
            return t.expand(batch)
        if t.shape != (batch,):
            raise ValueError(f"t must be a scalar or have shape ({batch},), got {tuple(t.shape)}")
        return t

    def _class_tokens(self, y: torch.Tensor | None, batch: int, device: torch.device) -> torch.Tensor:
        if y is None:
            y = torch.full((batch,), self.num_classes, dtype=torch.long, device=device)
        elif y.shape != (batch,):
            raise ValueError(
                f"y must have shape ({batch},) with ids in [0, {self.num_classes}], got {tuple(y.shape)}"
            )
        return self.label_emb(y)

    def _run_block(self, block: UViTBlock, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, x, skip, use_reentrant=False)
        return block(x, skip)

    def forward(
        self, x: torch.Tensor, t: torch.Tensor | float, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Predict the noise for ``x`` (B, C, H, W) at network time ``t`` ((B,) or scalar), class ids ``y`` (B,).

        ``y`` defaults to the null id ``num_classes``; unconditional models ignore it. Returns (B, C_out, H, W).
        """
        grid_h, grid_w = self._check_input(x)
        batch = x.shape[0]
        tokens = self.patch_embed(x)
        param_dtype = self.pos_embed.dtype

        time = self._time_tensor(t, batch, x.device)
        extra = [self.time_embed(timestep_sinusoid(time, self.hidden_size).to(param_dtype))]
        if self.label_emb is not None:
            # U-ViT's order: [class, time, patches].
            extra.insert(0, self._class_tokens(y, batch, x.device))
        h = torch.cat([e.unsqueeze(1).to(tokens.dtype) for e in extra] + [tokens], dim=1)
        h = h + resize_pos_embed(self.pos_embed, self.grid_size, (grid_h, grid_w), self.num_extra_tokens)

        skips = []
        for block in self.in_blocks:
            h = self._run_block(block, h)
            skips.append(h)
        h = self._run_block(self.mid_block, h)
        for block in self.out_blocks:
            h = self._run_block(block, h, skips.pop())

        h = self.decoder_pred(self.norm(h))[:, self.num_extra_tokens :]
        p = self.patch_size
        out = rearrange(h, "b (h w) (p1 p2 c) -> b c (h p1) (w p2)", h=grid_h, w=grid_w, p1=p, p2=p)
        return self.final_layer(out)
