"""``dimlab shards ...``: the shard-writing commands (imagefolder, cifar10, digits, latents).

The ``dimlab`` dispatcher runs ``dimlab shards ARGS`` as :func:`main` with ``ARGS``.
"""

from __future__ import annotations

import argparse
import os
import sys

from dimlab.console import make_console
from dimlab.data.cifar import write_cifar10_shards
from dimlab.data.digits import write_digits_shards
from dimlab.data.imagefolder import write_imagefolder_shards
from dimlab.data.latents import write_latent_shards


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser for ``dimlab shards``."""
    parser = argparse.ArgumentParser(
        prog="dimlab shards",
        description="Write WebDataset tar shards (+ manifest.json). Reruns resume: finished shards are kept.",
    )
    commands = parser.add_subparsers(dest="source", required=True, metavar="SOURCE")
    default_workers = os.cpu_count() or 1

    folder = commands.add_parser(
        "imagefolder", help="ImageNet-style folder tree -> ADM-centre-cropped images"
    )
    folder.add_argument("src", help="SRC/<class>/<image> or SRC/{train,val,...}/<class>/<image>")
    folder.add_argument("out", help="output directory")
    folder.add_argument(
        "--resolution",
        type=_positive_int,
        required=True,
        help="side of the square crops in pixels, e.g. 256 or 512 (latent shards need a multiple of 8)",
    )
    folder.add_argument(
        "--shard-size", type=_positive_int, default=1000, help="images per shard (default 1000)"
    )
    folder.add_argument("--workers", type=_positive_int, default=default_workers)
    folder.add_argument("--format", choices=("jpeg", "png"), default="jpeg")
    folder.add_argument("--quality", type=int, default=95, help="JPEG quality (default 95)")
    folder.add_argument("--class-map", help="JSON {folder: id} or text lines 'folder [id]'")
    folder.add_argument("--split", help="treat SRC as this one split instead of detecting split folders")
    folder.add_argument("--seed", type=int, default=0, help="seed of the file-order shuffle (default 0)")

    cifar = commands.add_parser("cifar10", help="CIFAR-10 python archive -> PNG train/test shards")
    cifar.add_argument("out", help="output directory")
    cifar.add_argument(
        "--archive", help="cifar-10-python.tar.gz (downloaded into OUT/.download when omitted)"
    )
    cifar.add_argument("--shard-size", type=_positive_int, default=1000)
    cifar.add_argument("--workers", type=_positive_int, default=default_workers)

    digits = commands.add_parser(
        "digits", help="scikit-learn digits -> upsampled 1-channel PNG train/val shards"
    )
    digits.add_argument("out", help="output directory")
    digits.add_argument("--size", type=int, default=16, help="output side in pixels (default 16)")
    digits.add_argument("--val-fraction", type=float, default=0.1)
    digits.add_argument("--seed", type=int, default=0, help="seed of the train/val split (default 0)")
    digits.add_argument("--shard-size", type=_positive_int, default=200)
    digits.add_argument("--workers", type=_positive_int, default=1)

    latents = commands.add_parser("latents", help="image shards -> SD-VAE moments of each image and its flip")
    latents.add_argument("src_shards", help="image shard directory (with manifest.json)")
    latents.add_argument("out", help="output directory")
    latents.add_argument(
        "--vae", required=True, help="local diffusers AutoencoderKL folder (save_pretrained)"
    )
    latents.add_argument("--batch-size", type=_positive_int, default=64)
    latents.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1, ...")
    latents.add_argument(
        "--dtype", choices=("fp32", "fp16", "bf16"), default="fp32", help="VAE compute dtype"
    )
    latents.add_argument("--workers", type=_positive_int, default=4, help="image-decoding threads")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``dimlab shards`` with ``argv`` (without the leading ``shards``); returns the exit status."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    console = make_console(stderr=True)
    try:
        if args.source == "imagefolder":
            write_imagefolder_shards(
                args.src,
                args.out,
                resolution=args.resolution,
                image_format=args.format,
                quality=args.quality,
                shard_size=args.shard_size,
                workers=args.workers,
                class_map=args.class_map,
                split=args.split,
                seed=args.seed,
                console=console,
            )
        elif args.source == "cifar10":
            write_cifar10_shards(args.out, args.archive, shard_size=args.shard_size, workers=args.workers)
        elif args.source == "digits":
            write_digits_shards(
                args.out,
                size=args.size,
                val_fraction=args.val_fraction,
                seed=args.seed,
                shard_size=args.shard_size,
                workers=args.workers,
            )
        else:
            write_latent_shards(
                args.src_shards,
                args.out,
                vae_path=args.vae,
                batch_size=args.batch_size,
                device=args.device,
                dtype=args.dtype,
                threads=args.workers,
            )
    except (FileNotFoundError, ValueError) as exc:
        console.print(f"[red]error:[/] {exc}")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
