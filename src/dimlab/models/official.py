"""Official DiM checkpoints <-> dimlab: the parameter renaming and the architecture read off the tensors.

The official <-> dimlab mapping is a pure renaming, except the two token tables, which dimlab stores as
(pad_len, D) (official: ``pad_token`` (1, D, pad_len) and ``pad_token_dec_split`` (1, pad_len, D)); the table is
in docs/backbone.md ("Official checkpoints"). Files: :mod:`dimlab.models.checkpoint`; command line:
``dimlab convert-official``.
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from dimlab.models.dim import NUM_COND_TOKENS, DiM

__all__ = [
    "check_official_representable",
    "convert_official_state_dict",
    "dimlab_to_official",
    "infer_official_config",
    "official_to_dimlab",
    "strip_prefix",
]

# (official template, dimlab template); {i} = block index, {wb} = weight|bias, {name} = a mixer parameter.
_RENAMES: tuple[tuple[str, str], ...] = (
    ("additional_embed", "pos_embed"),
    ("pos_embed.proj.{wb}", "patch_embed.{wb}"),
    ("transformer_blocks.{i}.scale_shift_table", "blocks.{i}.scale_shift_table"),
    ("transformer_blocks.{i}.norm1.norm.weight", "blocks.{i}.norm.weight"),
    ("transformer_blocks.{i}.attn1.{name}", "blocks.{i}.mixer.{name}"),
    ("transformer_blocks.{i}.skip_linear.{wb}", "blocks.{i}.skip_fusion.concat_proj.{wb}"),
    ("transformer_blocks.{i}.skip_linear.0.{wb}", "blocks.{i}.skip_fusion.hidden_proj.{wb}"),
    ("transformer_blocks.{i}.skip_linear.1.{wb}", "blocks.{i}.skip_fusion.skip_proj.{wb}"),
    ("norm_out.norm.weight", "final_norm.weight"),
    ("adaln_single.emb.timestep_embedder.linear_1.{wb}", "adaln.timestep_mlp.linear_1.{wb}"),
    ("adaln_single.emb.timestep_embedder.linear_2.{wb}", "adaln.timestep_mlp.linear_2.{wb}"),
    ("adaln_single.emb.class_embedder.embedding_table.weight", "adaln.class_table.weight"),
    ("adaln_single.linear.{wb}", "adaln.linear.{wb}"),
    ("label_emb.weight", "label_embed.weight"),
    ("a4m_adapter.first_smoother.{wb}", "local_enhance_in.{wb}"),
    ("a4m_adapter.last_smoother.{wb}", "local_enhance_out.{wb}"),
    ("proj_out_1.{wb}", "final_modulation.{wb}"),
    ("proj_out_2.{wb}", "final_proj.{wb}"),
)
_MIXER_PARAMS = "in_proj.weight|conv1d.weight|conv1d.bias|x_proj.weight|dt_proj.weight|dt_proj.bias|A_log|D|out_proj.weight"
_PLACEHOLDERS = {"i": r"(?P<i>\d+)", "wb": r"(?P<wb>weight|bias)", "name": rf"(?P<name>{_MIXER_PARAMS})"}

# Token tables: official name, dimlab name, official -> dimlab, dimlab -> official.
_TOKEN_TABLES: tuple[tuple[str, str, Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]], ...] = (
    ("a4m_adapter.pad_token", "line_pad_tokens", lambda t: t[0].t().contiguous(), lambda t: t.t().unsqueeze(0).contiguous()),
    ("a4m_adapter.pad_token_dec_split", "separator_tokens", lambda t: t[0].contiguous(), lambda t: t.unsqueeze(0).contiguous()),
)  # fmt: skip


def _compile(template: str) -> re.Pattern[str]:
    pattern = re.escape(template)
    for key, group in _PLACEHOLDERS.items():
        pattern = pattern.replace(re.escape("{" + key + "}"), group)
    return re.compile(pattern + r"\Z")


_OFFICIAL_RULES = [(_compile(src), dst) for src, dst in _RENAMES]
_DIMLAB_RULES = [(_compile(dst), src) for src, dst in _RENAMES]


def _rename(key: str, rules: list[tuple[re.Pattern[str], str]]) -> str | None:
    for pattern, template in rules:
        match = pattern.match(key)
        if match:
            return template.format(**match.groupdict())
    return None


def strip_prefix(state_dict: Mapping[str, Any], prefix: str = "module.") -> dict[str, Any]:
    """Drop ``prefix`` (DDP's ``module.`` by default) when every key carries it; otherwise return a copy."""
    if state_dict and all(k.startswith(prefix) for k in state_dict):
        return {k[len(prefix) :]: v for k, v in state_dict.items()}
    return dict(state_dict)


def official_to_dimlab(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an official ``Mamba2DModel`` state dict to dimlab ``DiM`` names (tensors are shared, not copied).

    Raises ValueError listing every key that is not an official DiM parameter.
    """
    out: dict[str, torch.Tensor] = {}
    unknown = []
    tokens = {src: (dst, fwd) for src, dst, fwd, _ in _TOKEN_TABLES}
    for key, value in strip_prefix(state_dict).items():
        if key in tokens:
            dst, fwd = tokens[key]
            out[dst] = fwd(value)
            continue
        new = _rename(key, _OFFICIAL_RULES)
        if new is None:
            unknown.append(key)
        else:
            out[new] = value
    if unknown:
        raise ValueError(f"{len(unknown)} key(s) are not official DiM parameters: {sorted(unknown)}")
    return out


def dimlab_to_official(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of :func:`official_to_dimlab`: dimlab ``DiM`` names back to the official ones (bit-exact)."""
    out: dict[str, torch.Tensor] = {}
    unknown = []
    tokens = {dst: (src, bwd) for src, dst, _, bwd in _TOKEN_TABLES}
    for key, value in state_dict.items():
        if key in tokens:
            src, bwd = tokens[key]
            out[src] = bwd(value)
            continue
        new = _rename(key, _DIMLAB_RULES)
        if new is None:
            unknown.append(key)
        else:
            out[new] = value
    if unknown:
        raise ValueError(f"{len(unknown)} key(s) have no official DiM counterpart: {sorted(unknown)}")
    return out


def infer_official_config(
    state_dict: Mapping[str, torch.Tensor], pad_fill: str | None = None
) -> dict[str, Any]:
    """DiM constructor kwargs inferred from the tensors of an official state dict.

    Width, depth, patch, channels, classes, grid, d_state, d_conv, expand, skip style and which of the
    switchable components exist are read from names and shapes. Two things are not stored in the weights:
    ``multi_scan`` (every released config scans with all 4 patterns) and ``pad_fill``; unless given, it is
    "rho_pad" for a 32x32 token grid (the only released 32x32 model is the 512 fine-tune, which uses rho_pad)
    and "lateral" otherwise.
    """
    sd = strip_prefix(state_dict)
    required = [
        "additional_embed",
        "pos_embed.proj.weight",
        "proj_out_2.weight",
        "label_emb.weight",
        "transformer_blocks.0.attn1.A_log",
        "transformer_blocks.0.attn1.conv1d.weight",
        "transformer_blocks.0.attn1.dt_proj.weight",
    ]
    missing = [k for k in required if k not in sd]
    if missing:
        raise ValueError(f"not an official DiM state dict: missing {missing}")
    patch_w = sd["pos_embed.proj.weight"]
    hidden, in_channels, patch_h, patch_w_size = patch_w.shape
    if patch_h != patch_w_size:
        raise ValueError(
            f"pos_embed.proj.weight has a non-square kernel {tuple(patch_w.shape)}; expected p x p"
        )
    patch = patch_h
    out_features = sd["proj_out_2.weight"].shape[0]
    if out_features % (patch * patch):
        raise ValueError(
            f"proj_out_2.weight has {out_features} rows, expected a multiple of patch^2 = {patch**2}"
        )
    num_image_tokens = sd["additional_embed"].shape[1] - NUM_COND_TOKENS
    side = math.isqrt(num_image_tokens)
    if side * side != num_image_tokens:
        raise ValueError(
            f"additional_embed has {num_image_tokens} image rows (+{NUM_COND_TOKENS}); official grids are square"
        )
    a_log = sd["transformer_blocks.0.attn1.A_log"]
    d_inner, d_state = a_log.shape
    if d_inner % hidden:
        raise ValueError(f"A_log has {d_inner} rows, expected a multiple of the width {hidden}")
    dt_rank = sd["transformer_blocks.0.attn1.dt_proj.weight"].shape[1]
    if dt_rank != math.ceil(hidden / 16):
        raise ValueError(
            f"dt_proj.weight has dt_rank {dt_rank}; dimlab's DiM uses ceil(D/16) = {math.ceil(hidden / 16)}"
        )
    d_conv = sd["transformer_blocks.0.attn1.conv1d.weight"].shape[-1]
    block_ids = {int(m.group(1)) for k in sd if (m := re.match(r"transformer_blocks\.(\d+)\.", k))}
    depth = max(block_ids) + 1
    concat = any(re.fullmatch(r"transformer_blocks\.\d+\.skip_linear\.weight", k) for k in sd)
    summed = any(re.fullmatch(r"transformer_blocks\.\d+\.skip_linear\.0\.weight", k) for k in sd)
    for name, pad_axis in (("a4m_adapter.pad_token", -1), ("a4m_adapter.pad_token_dec_split", 1)):
        if name in sd and sd[name].shape[pad_axis] != d_conv:
            raise ValueError(
                f"{name} has pad length {sd[name].shape[pad_axis]}; dimlab ties the pad length to d_conv = {d_conv}"
            )
    if pad_fill is None:
        pad_fill = "rho_pad" if side == 32 else "lateral"
    return dict(
        input_size=side * patch,
        patch_size=patch,
        in_channels=in_channels,
        out_channels=out_features // (patch * patch),
        hidden_size=hidden,
        depth=depth,
        num_classes=sd["label_emb.weight"].shape[0] - 1,
        d_state=d_state,
        d_conv=d_conv,
        expand=d_inner // hidden,
        multi_scan=4,
        long_skip=concat or summed,
        line_pad="a4m_adapter.pad_token" in sd,
        cond_separator="a4m_adapter.pad_token_dec_split" in sd,
        local_enhance="a4m_adapter.first_smoother.weight" in sd,
        pad_fill=pad_fill,
        skip_fusion="sum" if summed else "concat",
    )


def _check_against_model(model: nn.Module, state_dict: Mapping[str, torch.Tensor], what: str) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = [
        f"{k}: expected {tuple(expected[k].shape)}, got {tuple(state_dict[k].shape)}"
        for k in expected
        if k in state_dict and tuple(expected[k].shape) != tuple(state_dict[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} key(s): {missing}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} key(s): {unexpected}")
    if mismatched:
        problems.append(f"shape mismatches: {mismatched}")
    if problems:
        raise ValueError(f"{what} does not fit the inferred DiM: " + "; ".join(problems))


def convert_official_state_dict(
    state_dict: Mapping[str, torch.Tensor], pad_fill: str | None = None
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Official state dict -> (DiM init_args, dimlab state dict), checked key by key against a meta-device DiM.

    Raises ValueError listing missing keys, unknown keys or shape mismatches.
    """
    init_args = infer_official_config(state_dict, pad_fill=pad_fill)
    converted = official_to_dimlab(state_dict)
    with torch.device("meta"):
        model = DiM(**init_args)
    _check_against_model(model, converted, "the official state dict")
    return init_args, converted


def check_official_representable(init_args: Mapping[str, Any]) -> None:
    """ValueError when a DiM with ``init_args`` has no official form (the official code ties line pads and
    separators together and picks the skip fusion by width)."""
    defaults = {
        name: param.default
        for name, param in inspect.signature(DiM).parameters.items()
        if param.default is not inspect.Parameter.empty
    }
    args = {**defaults, **init_args}
    if bool(args["line_pad"]) != bool(args["cond_separator"]):
        raise ValueError("the official model ties line pads and separators together (use_pad_token); got "
                         f"line_pad={args['line_pad']}, cond_separator={args['cond_separator']}")  # fmt: skip
    if args["long_skip"]:
        official = "concat" if args["hidden_size"] <= 512 else "sum"
        chosen = official if args["skip_fusion"] == "auto" else args["skip_fusion"]
        if chosen != official:
            raise ValueError(
                f"the official model fuses skips with {official!r} at width {args['hidden_size']}, "
                f"this model uses {chosen!r}"
            )
