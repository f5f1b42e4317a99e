"""Official DiM checkpoints <-> dimlab, the backbone checkpoint format, and loading backbones from files.

Backbone file format (written by ``dimlab convert-official`` and readable by :func:`load_backbone`)::

    {"dimlab_backbone": {"class_path": "dimlab.models.dim.DiM", "init_args": {...}},
     "backbone": <state dict>,
     "source": "<where the weights came from>"}

Lightning training checkpoints of dimlab's DiffusionModule carry the same ``dimlab_backbone`` entry, the raw
weights under ``state_dict`` with the key prefix ``backbone.``, and the EMA weights (unprefixed) under
``ema_backbone``; :func:`load_backbone` reads both.

The official <-> dimlab mapping is a pure renaming, except the two token tables, which dimlab stores as
(pad_len, D) (official: ``pad_token`` (1, D, pad_len) and ``pad_token_dec_split`` (1, pad_len, D)).
"""

from __future__ import annotations

import argparse
import inspect
import math
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dimlab.models.spec import build_from_spec

DIM_CLASS_PATH = "dimlab.models.dim.DiM"
NUM_COND_TOKENS = 2  # time and class tokens in front of the official position table

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
    from dimlab.models.dim import DiM

    init_args = infer_official_config(state_dict, pad_fill=pad_fill)
    converted = official_to_dimlab(state_dict)
    with torch.device("meta"):
        model = DiM(**init_args)
    _check_against_model(model, converted, "the official state dict")
    return init_args, converted


# ------------------------------------------------------------------------------------------ checkpoint files
def backbone_checkpoint(
    init_args: Mapping[str, Any],
    state_dict: Mapping[str, torch.Tensor],
    source: str,
    class_path: str = DIM_CLASS_PATH,
) -> dict[str, Any]:
    """The dimlab backbone file content (see the module docstring)."""
    return {
        "dimlab_backbone": {"class_path": class_path, "init_args": dict(init_args)},
        "backbone": dict(state_dict),
        "source": source,
    }


def _torch_load(path: str | Path, map_location: Any) -> Any:
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:  # noqa: BLE001 - any unpickling failure means "holds Python objects"
        warnings.warn(
            f"{path} holds pickled Python objects besides tensors ({type(err).__name__}); loading it with "
            "weights_only=False. Only load checkpoint files you trust.",
            stacklevel=3,
        )
        return torch.load(path, map_location=map_location, weights_only=False)


def read_backbone_file(
    path: str | Path, map_location: Any = "cpu", ema: bool = True
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(``dimlab_backbone`` spec, backbone state dict) of a backbone file or a Lightning training checkpoint.

    Weights: ``backbone`` (backbone files); else ``ema_backbone`` when ``ema`` and present; else the
    ``backbone.``-prefixed entries of ``state_dict``.
    """
    ckpt = _torch_load(path, map_location)
    if not isinstance(ckpt, Mapping) or "dimlab_backbone" not in ckpt:
        raise ValueError(
            f"{path} is not a dimlab backbone or training checkpoint (no 'dimlab_backbone' entry); "
            "convert official DiM files with `dimlab convert-official SRC.pth DST`"
        )
    spec = dict(ckpt["dimlab_backbone"])
    if "class_path" not in spec or "init_args" not in spec:
        raise ValueError(
            f"{path}: 'dimlab_backbone' must hold 'class_path' and 'init_args', got {sorted(spec)}"
        )
    if "backbone" in ckpt:
        weights = dict(ckpt["backbone"])
    elif ema and ckpt.get("ema_backbone") is not None:
        weights = dict(ckpt["ema_backbone"])
    elif "state_dict" in ckpt:
        prefix = "backbone."
        weights = {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
        if not weights:
            raise ValueError(f"{path}: 'state_dict' has no keys starting with {prefix!r}")
    else:
        raise ValueError(f"{path}: no weights found (expected 'backbone', 'ema_backbone' or 'state_dict')")
    return spec, weights


def _has_meta_tensors(model: nn.Module) -> bool:
    return any(t.is_meta for t in [*model.parameters(), *model.buffers()])


def load_backbone(
    path: str | Path, map_location: Any = "cpu", ema: bool = True, **overrides: Any
) -> nn.Module:
    """Build the backbone stored in ``path`` (backbone file or training checkpoint) and load its weights.

    Without ``overrides`` the weights load strictly, into a model built on the meta device (no wasted random
    init). With ``overrides`` (e.g. ``input_size=64`` to run a 256 model at 512) the model is built with the
    changed kwargs and loaded through :func:`load_weights_adapting` (position table resized bilinearly).
    """
    spec, weights = read_backbone_file(path, map_location=map_location, ema=ema)
    spec = {"class_path": spec["class_path"], "init_args": {**spec["init_args"], **overrides}}
    if overrides:
        model = build_from_spec(spec)
        load_weights_adapting(model, weights)
        return model
    with torch.device("meta"):
        model = build_from_spec(spec)
    model.load_state_dict(weights, strict=True, assign=True)
    if _has_meta_tensors(model):  # a buffer that the state dict does not hold: build for real instead
        model = build_from_spec(spec)
        model.load_state_dict(weights, strict=True)
    return model


@dataclass
class LoadReport:
    """What :func:`load_weights_adapting` did with each tensor name."""

    copied: list[str] = field(default_factory=list)
    resized: list[str] = field(default_factory=list)
    newly_initialised: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)


def load_weights_adapting(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], source_grid: tuple[int, int] | None = None
) -> LoadReport:
    """Load ``state_dict`` into ``model``, resizing a DiM position table whose grid differs (section 6.1).

    The position table (``pos_embed``) is resized bilinearly from ``source_grid`` (default: the square grid its
    row count implies); every other tensor must match in shape, else ValueError listing (name, expected, got)
    for each mismatch. Model tensors absent from ``state_dict`` keep their initialisation
    (``newly_initialised``); extra entries are ignored (``unexpected``).
    """
    from dimlab.models.dim import resize_pos_embed

    target = model.state_dict()
    report = LoadReport()
    to_load: dict[str, torch.Tensor] = {}
    mismatched = []
    for name, expected in target.items():
        if name not in state_dict:
            report.newly_initialised.append(name)
            continue
        value = state_dict[name]
        if tuple(value.shape) == tuple(expected.shape):
            to_load[name] = value
            report.copied.append(name)
        elif name == "pos_embed" and hasattr(model, "grid_size") and value.ndim == 3:
            to_load[name] = _resize_table(
                value, expected, tuple(model.grid_size), source_grid, resize_pos_embed
            )
            report.resized.append(name)
        else:
            mismatched.append(f"{name}: expected {tuple(expected.shape)}, got {tuple(value.shape)}")
    report.unexpected = sorted(set(state_dict) - set(target))
    if mismatched:
        raise ValueError(f"{len(mismatched)} tensor(s) do not match the model: {mismatched}")
    model.load_state_dict(to_load, strict=False)
    return report


def _resize_table(
    value: torch.Tensor,
    expected: torch.Tensor,
    dst_grid: tuple[int, int],
    source_grid: tuple[int, int] | None,
    resize: Callable[..., torch.Tensor],
) -> torch.Tensor:
    num_extra = expected.shape[1] - dst_grid[0] * dst_grid[1]
    if source_grid is None:
        side = math.isqrt(value.shape[1] - num_extra)
        if side * side != value.shape[1] - num_extra:
            raise ValueError(
                f"pos_embed: cannot tell the source grid of {value.shape[1] - num_extra} image rows; "
                "pass source_grid=(rows, cols)"
            )
        source_grid = (side, side)
    return resize(value, source_grid, dst_grid, num_extra=num_extra)


# ------------------------------------------------------------------------------------------ command line
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dimlab convert-official",
        description="Convert an official DiM checkpoint (nnet.pth / nnet_ema.pth) into a dimlab backbone file, "
        "or (--reverse) a dimlab backbone/training checkpoint into an official state dict.",
    )
    parser.add_argument("src", type=Path, help="source file")
    parser.add_argument("dst", type=Path, help="destination file")
    parser.add_argument(
        "--reverse", action="store_true", help="dimlab -> official instead of official -> dimlab"
    )
    parser.add_argument(
        "--pad-fill",
        choices=["auto", "lateral", "rho_pad"],
        default="auto",
        help="pad fill of the converted model (not stored in official weights; auto: rho_pad for 32x32 grids)",
    )
    parser.add_argument(
        "--no-ema", action="store_true", help="with --reverse on a training checkpoint: use the raw weights"
    )
    return parser


def _check_official_representable(init_args: Mapping[str, Any]) -> None:
    from dimlab.models.dim import DiM

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


def main(argv: Sequence[str] | None = None) -> int:
    """``dimlab convert-official SRC DST [--reverse] [--pad-fill ...] [--no-ema]``; returns the exit code."""
    argv = list(argv) if argv is not None else None
    if argv and argv[0] == "convert-official":
        argv = argv[1:]
    args = _parser().parse_args(argv)
    if args.reverse:
        spec, weights = read_backbone_file(args.src, ema=not args.no_ema)
        if spec["class_path"] != DIM_CLASS_PATH:
            raise SystemExit(
                f"{args.src} holds a {spec['class_path']}, only {DIM_CLASS_PATH} has an official form"
            )
        _check_official_representable(spec["init_args"])
        official = dimlab_to_official(weights)
        torch.save(official, args.dst)
        print(f"wrote official DiM state dict ({len(official)} tensors) to {args.dst}")
        return 0
    state_dict = _torch_load(args.src, "cpu")
    if (
        isinstance(state_dict, Mapping)
        and "state_dict" in state_dict
        and "additional_embed" not in state_dict
    ):
        state_dict = state_dict["state_dict"]
    pad_fill = None if args.pad_fill == "auto" else args.pad_fill
    init_args, converted = convert_official_state_dict(state_dict, pad_fill=pad_fill)
    torch.save(
        backbone_checkpoint(init_args, converted, source=f"official DiM checkpoint {args.src}"), args.dst
    )
    n_params = sum(t.numel() for t in converted.values())
    print(f"wrote dimlab backbone ({n_params:,} parameters, {init_args}) to {args.dst}")
    return 0
