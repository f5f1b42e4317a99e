"""``dimlab sample``: images from a checkpoint as PNGs, a grid and optionally an ``.npz`` of uint8 images.

A progress bar counts the images with the time left. The grid is padded; with ``--class-labels`` each row is one
class.

Seeds and random labels follow :func:`dimlab.eval.split.sample_seeds` and :func:`dimlab.eval.split.official_labels`,
the rule ``dimlab fid`` uses, so both commands draw the same first images from one checkpoint and seed.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch

from dimlab.commands.options import add_fast_eval_arguments, add_trust_argument, check_compile_argument
from dimlab.commands.progress import SamplingProgress
from dimlab.diffusion.samplers import SAMPLERS, check_sampler_settings
from dimlab.errors import BadArgumentError
from dimlab.eval.split import official_labels, sample_seeds
from dimlab.sampling.images import save_grid, save_npz, save_pngs, to_uint8_hwc
from dimlab.sampling.sampler import Sampler, load_sampler


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of ``dimlab sample``."""
    p = argparse.ArgumentParser(prog="dimlab sample", description=__doc__)
    p.add_argument(
        "--ckpt", required=True, help="dimlab training checkpoint (.ckpt) or `dimlab convert-official` output"
    )
    p.add_argument("--num", type=int, default=16, help="number of images")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--class-labels",
        type=int,
        nargs="*",
        default=None,
        help="class ids, cycled over the images (default: uniform random; ignored if unconditional)",
    )
    p.add_argument(
        "--cfg-scale", type=float, default=0.0, help="U-ViT CFG scale s (guidance weight w = 1 + s)"
    )
    p.add_argument(
        "--sampler",
        choices=SAMPLERS,
        default=None,
        help="default: dpm++, or plain dpm with --upsample-guidance (what the released 1024/1536 evaluator runs)",
    )
    p.add_argument("--steps", type=int, default=50)
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="base seed: image i and the random labels follow the seed rule of `dimlab fid` (same seed, same images)",
    )
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument(
        "--resolution",
        type=int,
        nargs="+",
        default=None,
        help="output size in pixels (one value for square, or H W); default: the trained size",
    )
    p.add_argument(
        "--upsample-guidance",
        action="store_true",
        help="training-free upsampling guidance (arXiv 2404.01709) for resolutions above the trained one; "
        "the official setting adds --cfg-scale 3.0",
    )
    p.add_argument("--ug-theta", type=float, default=1.0, help="guidance weight theta (default 1)")
    p.add_argument(
        "--ug-eta",
        type=float,
        default=0.3,
        help="active for t >= (1 - eta) T: the noisiest eta (default 0.3)",
    )
    p.add_argument("--ug-T", type=float, default=1.0)
    p.add_argument(
        "--ug-factor",
        type=int,
        default=None,
        help="upsampling factor m (default: target / trained size, when that is one integer in both dims)",
    )
    p.add_argument(
        "--ug-tau",
        choices=("clean", "official"),
        default="clean",
        help="SNR-matched step bookkeeping (official: the released arithmetic, about one step apart)",
    )
    p.add_argument(
        "--skip-tune",
        type=float,
        nargs=2,
        default=None,
        metavar=("RHO_TOP", "RHO_BOTTOM"),
        help="scale decoder skips by a time-dependent ramp (e.g. 0.82 1.0)",
    )
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--vae", default=None, help="VAE folder (overrides the one recorded in the checkpoint)")
    p.add_argument("--npz", action="store_true", help="also write samples.npz (uint8 NHWC, key arr_0)")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_fast_eval_arguments(p)
    add_trust_argument(p)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run ``dimlab sample`` with ``argv`` (without the leading ``sample``); returns the exit status."""
    args = build_parser().parse_args(argv)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if args.cuda_graphs and torch.device(device).type != "cuda":
        raise SystemExit(f"--cuda-graphs needs a CUDA device, but sampling would run on {device}")
    if args.sampler is None:
        args.sampler = "dpm" if args.upsample_guidance else "dpm++"
    check_arguments(args)
    sampler = load_sampler(
        args.ckpt, ema=not args.no_ema, device=device, vae_path=args.vae, trusted=args.trust_checkpoint
    )
    latent_shape = sampler.latent_shape
    factor = sampler.spec.vae_factor if sampler.spec.latent_space else 1
    if args.resolution:
        latent_shape = resolution_latent_shape(args.resolution, sampler)
    labels = class_labels(args, sampler)
    wrapper = None
    if args.upsample_guidance:
        try:
            wrapper = sampler.upsample_guidance(
                latent_shape,
                factor=args.ug_factor,
                theta=args.ug_theta,
                eta=args.ug_eta,
                T=args.ug_T,
                tau_bookkeeping=args.ug_tau,
            )
        except (ValueError, TypeError) as err:
            raise SystemExit(
                f"--upsample-guidance at {latent_shape[1] * factor}x{latent_shape[2] * factor}: {err}"
            ) from err
    elif args.ug_factor is not None:
        raise SystemExit("--ug-factor needs --upsample-guidance")

    if args.skip_tune is not None and not getattr(sampler.backbone, "num_skip_receivers", 0):
        raise SystemExit("--skip-tune needs a backbone with long skips")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    chunks = []
    with SamplingProgress(args.num, args.steps, enabled=not args.no_progress) as bar:
        for start in range(0, args.num, args.batch_size):
            idx = list(range(start, min(args.num, start + args.batch_size)))
            imgs = sampler.sample(
                [labels[i] for i in idx],
                sample_seeds(args.seed, idx),
                cfg_scale=args.cfg_scale,
                sampler=args.sampler,
                steps=args.steps,
                latent_shape=latent_shape,
                model_fn_wrapper=bar.counting(len(idx), wrapper),
                skip_tune=args.skip_tune,
                precision=args.precision,
                cuda_graphs=args.cuda_graphs,
                compile=args.compile,
            )
            arr = to_uint8_hwc(imgs)
            save_pngs(arr, out, idx)
            chunks.append(arr)
            bar.batch_done(idx[-1] + 1)
    images = np.concatenate(chunks)
    # one row per class when the classes were chosen; a square grid of random (or no) labels otherwise
    by_class = labels if sampler.class_conditional and args.class_labels else None
    save_grid(images, out / "grid.png", nrow=int(math.ceil(math.sqrt(args.num))), labels=by_class)
    if args.npz:
        save_npz(images, out / "samples.npz")
    (out / "sample_args.json").write_text(json.dumps({**vars(args), "labels": labels}, indent=2))
    print(f"wrote {args.num} images to {out}")
    return 0


def check_arguments(args: argparse.Namespace) -> None:
    """BadArgumentError naming the argument for settings that cannot work (checked before the model loads)."""
    if args.num < 1:
        raise BadArgumentError(f"--num: expected a positive number of images, got {args.num}")
    if args.batch_size < 1:
        raise BadArgumentError(f"--batch-size: expected a positive number of images, got {args.batch_size}")
    try:
        check_sampler_settings(args.sampler, args.steps)
    except ValueError as err:
        raise BadArgumentError(f"--steps {args.steps} with --sampler {args.sampler}: {err}") from err
    check_compile_argument(args)
    if args.resolution and (len(args.resolution) > 2 or min(args.resolution) < 1):
        given = " ".join(map(str, args.resolution))
        raise BadArgumentError(f"--resolution {given}: expected one size (square) or H W, in pixels")


def resolution_latent_shape(resolution: list[int], sampler: Sampler) -> tuple[int, int, int]:
    """The latent (C, H, W) for ``--resolution`` (one size or H W in pixels); BadArgumentError when the backbone
    cannot run at it (each side a multiple of the VAE factor times the patch size)."""
    h, w = (resolution * 2)[:2]
    factor = sampler.spec.vae_factor if sampler.spec.latent_space else 1
    patch = int(getattr(sampler.backbone, "patch_size", 1))
    if h % (factor * patch) or w % (factor * patch):
        why = (
            f"the patch size {patch}" if factor == 1 else f"the VAE factor {factor} x the patch size {patch}"
        )
        raise BadArgumentError(
            f"--resolution {h}x{w}: expected sides that are multiples of {factor * patch} ({why})"
        )
    return (sampler.latent_shape[0], h // factor, w // factor)


def class_labels(args: argparse.Namespace, sampler: Sampler) -> list[int]:
    """The label of each image: ``--class-labels`` cycled, else the seed rule's random labels; the null id for an
    unconditional model. BadArgumentError for an id the model does not have."""
    if not sampler.class_conditional:
        return [sampler.null_class] * args.num
    if not args.class_labels:
        return official_labels(args.num, sampler.num_classes, args.seed).tolist()
    wrong = [c for c in args.class_labels if not 0 <= c <= sampler.null_class]
    if wrong:
        raise BadArgumentError(
            f"--class-labels {' '.join(map(str, wrong))}: expected class ids 0..{sampler.num_classes - 1}, "
            f"or {sampler.null_class} for unconditional"
        )
    return [args.class_labels[i % len(args.class_labels)] for i in range(args.num)]
