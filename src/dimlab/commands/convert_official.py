"""``dimlab convert-official SRC DST``: official DiM weights -> a dimlab backbone file, or back (``--reverse``).

The backbone file also records the sampling settings the official recipe fixes (schedule, latent shape, classes,
VAE; :func:`dimlab.sampling.official.official_diffusion_spec`), so ``dimlab sample --ckpt DST`` and ``dimlab fid
--ckpt DST`` take it as they take a training checkpoint. ``--schedule``, ``--space``, ``--class-conditional``
and ``--vae`` override them (and are needed for architectures no official recipe has).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from dimlab.commands.options import add_trust_argument
from dimlab.diffusion.schedules import SCHEDULES
from dimlab.errors import CheckpointFileError
from dimlab.files import atomic_write
from dimlab.models.checkpoint import backbone_checkpoint, read_backbone_file, read_checkpoint
from dimlab.models.official import (
    check_official_representable,
    convert_official_state_dict,
    dimlab_to_official,
)
from dimlab.models.presets import DIM_CLASS_PATH
from dimlab.sampling.official import SPACES, official_diffusion_spec
from dimlab.sampling.spec import CHECKPOINT_KEY, DiffusionSpec


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
    sampling = parser.add_argument_group(
        "sampling settings recorded in DST (default: the official recipe the architecture implies: 3 input "
        "channels = CIFAR-10 pixels, VP-SDE, unconditional; 4 = ImageNet SD-VAE latents, sd_discrete, conditional)"
    )
    sampling.add_argument(
        "--schedule", choices=sorted(SCHEDULES), help="noise schedule the model was trained with"
    )
    sampling.add_argument("--space", choices=SPACES, help="what the model denoises: pixels or VAE latents")
    sampling.add_argument(
        "--class-conditional",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="sample with class labels (--no-class-conditional: always the null class)",
    )
    sampling.add_argument(
        "--vae", help="VAE folder of a latent-space model to record (else pass --vae when sampling)"
    )
    add_trust_argument(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``dimlab convert-official SRC DST [--reverse] [--pad-fill ...] [--no-ema]``; returns the exit code."""
    argv = list(argv) if argv is not None else None
    if argv and argv[0] == "convert-official":
        argv = argv[1:]
    args = build_parser().parse_args(argv)
    if args.reverse:
        return _to_official(args)
    state_dict = official_state_dict(
        read_checkpoint(args.src, "cpu", trusted=args.trust_checkpoint), args.src
    )
    pad_fill = None if args.pad_fill == "auto" else args.pad_fill
    try:
        init_args, converted = convert_official_state_dict(state_dict, pad_fill=pad_fill)
    except ValueError as err:
        raise CheckpointFileError(f"{args.src}: {err}") from err
    spec = official_diffusion_spec(init_args, args.schedule, args.space, args.class_conditional, args.vae)
    content = backbone_checkpoint(init_args, converted, source=f"official DiM checkpoint {args.src}")
    if spec is not None:
        content[CHECKPOINT_KEY] = spec.to_checkpoint()
    with atomic_write(args.dst, fsync=True) as handle:  # never a truncated checkpoint at the destination
        torch.save(content, handle)
    n_params = sum(t.numel() for t in converted.values())
    print(f"wrote dimlab backbone ({n_params:,} parameters, {init_args}) to {args.dst}")
    if spec is None:
        print(
            f"sampling settings: not recorded (in_channels={init_args['in_channels']} matches no official recipe); "
            "pass --schedule and --space to make the file samplable with `dimlab sample`"
        )
    else:
        print(f"sampling settings: {describe_spec(spec)}")
    return 0


def describe_spec(spec: DiffusionSpec) -> str:
    """One line saying what ``dimlab sample`` will do with a converted file."""
    c, h, w = spec.latent_shape
    if spec.latent_space:
        vae = spec.vae_path or "none recorded: pass --vae when sampling"
        data = f"{c}x{h}x{w} latents of {spec.image_size[0]}x{spec.image_size[1]} images (VAE: {vae})"
    else:
        data = f"{c}x{h}x{w} pixels"
    classes = "class-conditional" if spec.class_conditional else f"unconditional (null id {spec.null_class})"
    return f"{spec.schedule} schedule, {data}, {spec.num_classes} classes, {classes}"


def official_state_dict(content: Any, path: Path) -> Mapping[str, torch.Tensor]:
    """The parameter tensors of a loaded official file: the file itself, or its ``state_dict`` entry.

    CheckpointFileError naming ``path`` when it holds something else (a lone tensor, a list, ...).
    """
    if isinstance(content, Mapping) and "state_dict" in content and "additional_embed" not in content:
        content = content["state_dict"]
    if not isinstance(content, Mapping):
        raise CheckpointFileError(
            f"{path} holds a {type(content).__name__}; expected an official DiM state dict (a dict of "
            "parameter tensors, as in nnet_ema.pth)"
        )
    not_tensors = sorted(str(k) for k, v in content.items() if not isinstance(v, torch.Tensor))
    if not_tensors:
        raise CheckpointFileError(
            f"{path}: entries {not_tensors[:5]} are not tensors; expected an official DiM state dict (a dict of "
            "parameter tensors, as in nnet_ema.pth)"
        )
    return content


def _to_official(args: argparse.Namespace) -> int:
    spec, weights = read_backbone_file(args.src, ema=not args.no_ema, trusted=args.trust_checkpoint)
    if spec["class_path"] != DIM_CLASS_PATH:
        raise CheckpointFileError(
            f"{args.src} holds a {spec['class_path']}, only {DIM_CLASS_PATH} has an official form"
        )
    try:
        check_official_representable(spec["init_args"])
        official = dimlab_to_official(weights)
    except ValueError as err:
        raise CheckpointFileError(f"{args.src}: {err}") from err
    torch.save(official, args.dst)
    print(f"wrote official DiM state dict ({len(official)} tensors) to {args.dst}")
    return 0
