"""``dimlab fid``: FID of a checkpoint's samples or of stored images, and ``dimlab fid ref-stats`` to cache
reference statistics.

    dimlab fid --ckpt last.ckpt --num-samples 50000 --ref fid_stats_imagenet256_guided_diffusion.npz \\
        --cfg-scale 0.4 --steps 50 --devices 8 --out fid.json
    dimlab fid --images samples/ --ref stats.npz --out fid.json
    dimlab fid ref-stats data/cifar10 cifar10_train_stats.npz     # the train split of a `dimlab shards` folder

Several devices are driven by Lightning Fabric (``--strategy ddp_spawn`` by default: one process per device,
gloo on CPU, NCCL on GPU; ``ddp_fork`` starts faster on Linux CPU; ``ddp`` re-runs the command line); the
features are gathered once at the end. ``torchrun`` users can call
:func:`dimlab.eval.score.generate_and_score` directly. Weights and reference statistics are checked before any
model is loaded or image drawn.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata as md
import json
import sys
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from dimlab.commands.options import add_fast_eval_arguments, add_trust_argument, check_compile_argument
from dimlab.console import make_console
from dimlab.data.writers import make_progress
from dimlab.diffusion.samplers import check_sampler_settings
from dimlab.eval.images import open_image_source
from dimlab.eval.inception import (
    FEATURE_DIMS,
    InceptionWeightsNotFoundError,
    build_fid_metric,
    is_official_weights,
    resolve_inception_weights,
    weights_sha256,
)
from dimlab.eval.ref_stats import (
    DEFAULT_SPLIT,
    ReferenceStats,
    compute_reference_stats,
    find_reference_shards,
    iter_shard_images,
    load_reference_stats,
)
from dimlab.eval.score import generate_and_score, score_images
from dimlab.eval.split import LABEL_MODES, official_labels
from dimlab.files import atomic_write
from dimlab.sampling.images import save_pngs
from dimlab.sampling.sampler import load_sampler

__all__ = ["build_parser", "build_ref_stats_parser", "main"]

PROTOCOL = (
    "torchmetrics FrechetInceptionDistance with torch-fidelity's InceptionV3 (2015-12-05 FID weights, "
    "TF1-compatible bilinear resize to 299), 2048-d pool features, images rounded to uint8 like saved PNGs, "
    "float64 Frechet distance; comparable with pytorch-fid-based numbers (U-ViT, DiM), not identical to the "
    "ADM TensorFlow evaluator (DiT, SiT)"
)
CFG_CONVENTION = "U-ViT/DiM: eps = eps_c + s * (eps_c - eps_u), guidance weight w = 1 + s"
SEED_RULE = "sample i uses seed SeedSequence([base_seed, i]); labels drawn once for all N from base_seed"


def add_inception_arguments(p: argparse.ArgumentParser) -> None:
    """The Inception options every ``dimlab fid`` command shares."""
    p.add_argument("--inception-weights", type=Path, help="local weights-inception-2015-12-05-6726825d.pth")
    p.add_argument(
        "--download-inception", action="store_true", help="fetch the weights into the torch hub cache"
    )
    p.add_argument(
        "--feature-dim", type=int, choices=FEATURE_DIMS, default=2048, help="Inception block (2048 for FID)"
    )


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of ``dimlab fid`` (scoring a checkpoint or stored images)."""
    p = argparse.ArgumentParser(
        prog="dimlab fid",
        description="FID of a checkpoint's samples or of stored images against reference statistics. "
        "Use `dimlab fid ref-stats -h` to compute reference statistics.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--ckpt",
        type=Path,
        help="dimlab training checkpoint or `dimlab convert-official` output to sample from",
    )
    src.add_argument(
        "--images", type=Path, help="folder of PNG/JPEG images or .npz of uint8 N x H x W x 3 images"
    )
    p.add_argument(
        "--ref", type=Path, required=True, help="reference statistics .npz (ours or pytorch-fid's)"
    )
    p.add_argument(
        "--num-samples", type=int, help="images to generate (--ckpt) or score (--images; default all)"
    )
    p.add_argument("--cfg-scale", type=float, default=0.0, help=f"guidance scale s ({CFG_CONVENTION})")
    p.add_argument("--sampler", default="dpm++", help="sampler name understood by dimlab.diffusion (dpm++)")
    p.add_argument("--steps", type=int, default=50, help="sampler steps (official ImageNet: 50)")
    p.add_argument("--devices", type=int, default=1, help="number of devices (one process each)")
    p.add_argument("--accelerator", default="auto", help="Lightning accelerator: auto, cpu, cuda")
    p.add_argument(
        "--strategy",
        choices=("ddp_spawn", "ddp_fork", "ddp"),
        default="ddp_spawn",
        help="how --devices > 1 start their processes (ddp re-runs the command line; spawn/fork work from Python)",
    )
    p.add_argument("--batch-size", type=int, default=25, help="images per device per step (official: 25)")
    p.add_argument("--seed", type=int, default=0, help="base seed for per-sample noise and labels")
    p.add_argument("--labels", choices=LABEL_MODES, default="uniform", help="how class labels are drawn")
    p.add_argument("--class-counts", type=Path, help=".npy or .json of training images per class")
    p.add_argument("--out", type=Path, help="write the JSON report here")
    add_inception_arguments(p)
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA weights")
    p.add_argument("--vae", help="VAE folder for latent-space checkpoints (overrides the recorded one)")
    p.add_argument("--npz-key", help="array name inside --images .npz (default arr_0)")
    p.add_argument(
        "--save-images", type=Path, help="also write the generated images as PNGs into this folder"
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_fast_eval_arguments(p)
    add_trust_argument(p)
    return p


def build_ref_stats_parser() -> argparse.ArgumentParser:
    """Argument parser of ``dimlab fid ref-stats``."""
    p = argparse.ArgumentParser(
        prog="dimlab fid ref-stats",
        description="Compute and cache Inception statistics of real images (WebDataset shards with png/jpg, an "
        "image folder or an .npz of uint8 images).",
    )
    p.add_argument("source", help="shards (directory, glob or {000..009} pattern), image folder or .npz")
    p.add_argument("out", type=Path, help="output .npz (mu, sigma, count, resolution, source)")
    p.add_argument(
        "--split",
        help=f"split of a shard folder: from its manifest.json (default {DEFAULT_SPLIT}), or NAME-*.tar without one",
    )
    p.add_argument(
        "--resolution", type=int, help="centre-crop + resize shard images to this size (ADM style)"
    )
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--num-workers", type=int, default=4, help="decoding workers for shards")
    p.add_argument("--max-images", type=int, help="use at most this many images")
    p.add_argument("--device", default="cpu", help="device for the Inception network (cpu, cuda)")
    add_inception_arguments(p)
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``dimlab fid``; returns a process exit code (2 for bad input, with a message)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] == "ref-stats":
            return _ref_stats_main(build_ref_stats_parser().parse_args(argv[1:]))
        return _score_main(build_parser().parse_args(argv))
    except (FileNotFoundError, ValueError) as err:
        label = "missing FID Inception weights" if isinstance(err, InceptionWeightsNotFoundError) else "error"
        print(f"dimlab fid: {label}: {err}", file=sys.stderr)
        return 2


# ----------------------------------------------------------------------------------------------- scoring


def _load_class_counts(path: Path | None, mode: str):
    if mode == "uniform":
        if path is not None:
            raise ValueError("--class-counts is only used with --labels class_frequency")
        return None
    if path is None:
        raise ValueError(
            "--labels class_frequency needs --class-counts FILE (.npy or .json, images per class)"
        )
    if not path.is_file():
        raise FileNotFoundError(f"class counts file not found: {path}")
    counts = np.load(path) if path.suffix == ".npy" else np.asarray(json.loads(path.read_text()))
    if counts.ndim != 1:
        raise ValueError(f"{path}: expected a flat list of per-class counts, got shape {counts.shape}")
    return counts


def _check_score_args(args) -> None:
    for name in ("devices", "batch_size", "steps"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.ckpt is not None:
        try:  # before any model loads: e.g. dpm++ needs at least 3 steps
            check_sampler_settings(args.sampler, args.steps)
        except ValueError as err:
            raise ValueError(f"--steps {args.steps} with --sampler {args.sampler}: {err}") from err
        if args.num_samples is None:
            raise ValueError("--ckpt needs --num-samples N (50000 for paper numbers)")
        if not args.ckpt.is_file():
            raise FileNotFoundError(f"checkpoint not found: {args.ckpt}")
    elif not args.images.exists():
        raise FileNotFoundError(f"--images path not found: {args.images}")
    if args.cuda_graphs and (args.ckpt is None or args.accelerator == "cpu"):
        raise ValueError("--cuda-graphs applies to sampling from --ckpt on a CUDA accelerator")
    if args.compile and args.ckpt is None:
        raise ValueError("--compile applies to sampling from --ckpt (it compiles the backbone)")
    check_compile_argument(args)


def _score_main(args) -> int:
    _check_score_args(args)
    # Everything that can be missing is checked here, before any process starts or model loads.
    weights = resolve_inception_weights(args.inception_weights, download=args.download_inception)
    ref = load_reference_stats(args.ref)
    if ref.mu.shape[0] != args.feature_dim:
        raise ValueError(
            f"{args.ref} holds {ref.mu.shape[0]}-d statistics but --feature-dim is {args.feature_dim}"
        )
    class_counts = _load_class_counts(args.class_counts, args.labels) if args.ckpt is not None else None
    if args.images is not None:
        open_image_source(args.images, key=args.npz_key)  # fail early on a bad folder / npz

    # Imported here, not at the top: Lightning takes seconds to import, and `dimlab fid --help`, `ref-stats` and
    # every input check above run without it.
    from lightning.fabric import Fabric

    strategy = args.strategy if args.devices > 1 else "auto"
    fabric = Fabric(accelerator=args.accelerator, devices=args.devices, strategy=strategy)
    summary = fabric.launch(_run_rank, args, str(weights), ref, class_counts)
    report = _build_report(args, weights, ref, summary)
    if args.out is not None:
        with atomic_write(args.out, "w") as handle:
            handle.write(json.dumps(report, indent=2) + "\n")
    _print_table(report)
    return 0


def _run_rank(fabric, args, weights: str, ref: ReferenceStats, class_counts) -> dict:
    """One rank's work (run in each spawned process); returns a small picklable summary."""
    rank, world = fabric.global_rank, fabric.world_size
    metric = build_fid_metric(weights, feature=args.feature_dim, device=fabric.device)
    show = not args.no_progress and rank == 0
    if args.images is not None:
        source = open_image_source(args.images, key=args.npz_key)
        result = score_images(
            source,
            ref,
            args.batch_size,
            rank,
            world,
            num_samples=args.num_samples,
            metric=metric,
            progress=show,
        )
        return {
            "fid": result.fid,
            "num_samples": result.num_samples,
            "seconds": result.seconds,
            "world_size": world,
        }

    sampler = load_sampler(
        args.ckpt, ema=not args.no_ema, device=fabric.device, vae_path=args.vae, trusted=args.trust_checkpoint
    )
    labels = None
    if sampler.class_conditional:
        labels = official_labels(args.num_samples, sampler.num_classes, args.seed, args.labels, class_counts)

    def sample_fn(indices, batch_labels, seeds):
        return sampler.sample(
            batch_labels,
            seeds,
            cfg_scale=args.cfg_scale,
            sampler=args.sampler,
            steps=args.steps,
            precision=args.precision,
            cuda_graphs=args.cuda_graphs,
            compile=args.compile,
        )

    on_batch = None
    if args.save_images is not None:
        args.save_images.mkdir(parents=True, exist_ok=True)
        on_batch = _png_writer(args.save_images)
    result = generate_and_score(
        sample_fn,
        args.num_samples,
        args.batch_size,
        ref,
        rank,
        world,
        labels=labels,
        base_seed=args.seed,
        metric=metric,
        on_batch=on_batch,
        progress=show,
    )
    return {
        "fid": result.fid,
        "num_samples": result.num_samples,
        "seconds": result.seconds,
        "world_size": world,
        "num_classes": sampler.num_classes,
        "class_conditional": sampler.class_conditional,
        "image_size": list(sampler.image_size),
    }


def _png_writer(folder: Path):
    def write(indices, images):
        save_pngs(images.permute(0, 2, 3, 1).numpy(), folder, indices.tolist())

    return write


def _versions() -> dict:
    out = {}
    for name in ("dimlab", "torch", "torchmetrics", "torch-fidelity", "lightning"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def _build_report(args, weights: Path, ref: ReferenceStats, summary: dict) -> dict:
    sha = weights_sha256(weights)
    report = {
        "fid": summary["fid"],
        "num_samples": summary["num_samples"],
        "source": _source_entry(args),
        "protocol": PROTOCOL,
        "reference": {
            "path": str(args.ref),
            "sha256": weights_sha256(args.ref),
            "count": ref.count,
            "resolution": ref.resolution,
            "source": ref.source,
        },
        "inception_weights": {
            "path": str(weights),
            "sha256": sha,
            "official": is_official_weights(sha),
            "feature_dim": args.feature_dim,
        },
        "world_size": summary["world_size"],
        "batch_size_per_device": args.batch_size,
        "seconds": round(summary["seconds"], 2),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": _versions(),
    }
    if args.ckpt is not None:
        report["sampling"] = {
            "sampler": args.sampler,
            "steps": args.steps,
            "cfg_scale": args.cfg_scale,
            "cfg_convention": CFG_CONVENTION,
            "base_seed": args.seed,
            "seed_rule": SEED_RULE,
            "label_mode": args.labels if summary["class_conditional"] else "unconditional",
            "class_counts": None if args.class_counts is None else str(args.class_counts),
            "num_classes": summary["num_classes"],
            "image_size": summary["image_size"],
        }
    return report


def _source_entry(args) -> dict:
    if args.ckpt is not None:
        return {"kind": "checkpoint", "path": str(args.ckpt), "ema": not args.no_ema}
    return {"kind": "images", "path": str(args.images), "npz_key": args.npz_key}


def _print_table(report: dict) -> None:
    table = Table(title="dimlab fid", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    table.add_row("FID", f"{report['fid']:.4f}")
    table.add_row("images", str(report["num_samples"]))
    source = report["source"]
    if source["kind"] == "checkpoint":
        s = report["sampling"]
        table.add_row("checkpoint", f"{source['path']} ({'EMA' if source['ema'] else 'raw'} weights)")
        table.add_row("sampler", f"{s['sampler']}, {s['steps']} steps, cfg s={s['cfg_scale']} (w = 1 + s)")
        table.add_row("labels / seed", f"{s['label_mode']} / {s['base_seed']}")
    else:
        table.add_row("images from", source["path"])
    ref = report["reference"]
    table.add_row(
        "reference", f"{ref['path']} (count {ref['count'] if ref['count'] is not None else 'unknown'})"
    )
    inc = report["inception_weights"]
    official = "official" if inc["official"] else "NOT the official FID weights"
    table.add_row("inception", f"sha256 {inc['sha256'][:12]}… ({official}, {inc['feature_dim']}-d features)")
    table.add_row("devices / time", f"{report['world_size']} / {report['seconds']} s")
    make_console().print(table)


# ------------------------------------------------------------------------------------------- ref-stats


def _reference_batches(args, console: Console):
    """uint8 batches from shards, an image folder or an .npz, their description and image count (None: unknown).

    Says what will be read (the split and image count of shards) before the first image is decoded.
    """
    source = Path(args.source)
    is_images = source.suffix == ".npz" or (source.is_dir() and not any(source.glob("*.tar")))
    if is_images:
        if args.split is not None:
            raise ValueError(f"--split {args.split!r} picks a split of a shard folder; {source} holds images")
        images = open_image_source(source)
        total = _capped(len(images), args.max_images)

        def batches():
            for lo in range(0, total, args.batch_size):
                yield images.batch(range(lo, min(lo + args.batch_size, total)))

        console.print(f"reading {total} images from {images.description}")
        return batches(), images.description, total

    found = find_reference_shards(args.source, args.split)  # fails early on missing shards or splits
    description = args.source if found.split is None else f"{args.source} (split {found.split})"
    split = "" if found.split is None else f"split {found.split!r} of "
    count = "an unknown number of images" if found.num_images is None else f"{found.num_images} images"
    total = _capped(found.num_images, args.max_images)
    used = "" if total == found.num_images else f", using the first {total} (--max-images)"
    console.print(f"reading {split}{args.source}: {count} in {len(found.urls)} shard(s){used}")
    batches = iter_shard_images(found.urls, args.resolution, args.batch_size, args.num_workers)
    return batches, description, total


def _capped(count: int | None, max_images: int | None) -> int | None:
    known = [n for n in (count, max_images) if n is not None]
    return min(known) if known else None


def _ref_stats_main(args) -> int:
    if args.out.exists() and not args.overwrite:
        raise ValueError(f"{args.out} exists; pass --overwrite to replace it")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    weights = resolve_inception_weights(args.inception_weights, download=args.download_inception)
    console = make_console()
    batches, description, total = _reference_batches(args, console)

    metric = build_fid_metric(weights, feature=args.feature_dim, device=args.device)
    with make_progress(console, disable=args.no_progress) as progress:
        task = progress.add_task("reference images", total=total)
        stats = compute_reference_stats(
            batches,
            metric=metric,
            resolution=args.resolution,
            source=description,
            max_images=args.max_images,
            on_batch=lambda n: progress.advance(task, n),
        )
    stats.save(args.out)

    console.print(
        f"[bold]reference statistics[/bold] of {stats.count} images from {description} -> {args.out} "
        f"(resolution {stats.resolution or 'as stored'}, inception sha256 {weights_sha256(weights)[:12]}…)"
    )
    return 0
