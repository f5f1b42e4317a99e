"""``dimlab convert-official SRC DST``: official DiM weights -> a dimlab backbone file, or back (``--reverse``)."""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from dimlab.models.checkpoint import backbone_checkpoint, read_backbone_file, read_checkpoint
from dimlab.models.official import (
    check_official_representable,
    convert_official_state_dict,
    dimlab_to_official,
)
from dimlab.models.presets import DIM_CLASS_PATH


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of ``dimlab convert-official``."""
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


def main(argv: Sequence[str] | None = None) -> int:
    """``dimlab convert-official SRC DST [--reverse] [--pad-fill ...] [--no-ema]``; returns the exit code."""
    argv = list(argv) if argv is not None else None
    if argv and argv[0] == "convert-official":
        argv = argv[1:]
    args = build_parser().parse_args(argv)
    if args.reverse:
        spec, weights = read_backbone_file(args.src, ema=not args.no_ema)
        if spec["class_path"] != DIM_CLASS_PATH:
            raise SystemExit(
                f"{args.src} holds a {spec['class_path']}, only {DIM_CLASS_PATH} has an official form"
            )
        check_official_representable(spec["init_args"])
        official = dimlab_to_official(weights)
        torch.save(official, args.dst)
        print(f"wrote official DiM state dict ({len(official)} tensors) to {args.dst}")
        return 0
    state_dict = read_checkpoint(args.src, "cpu")
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
