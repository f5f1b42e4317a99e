"""The embedded demo: a class-conditional DiM trained on scikit-learn's digits on CPU, with no download.

``make demo`` (= ``python -m dimlab.demos.digits``, or ``python -m dimlab.demo``) writes digit shards if needed,
trains ``digits.yaml`` (package data beside this module; ``experiments/demo/digits.yaml`` links to it),
samples a 10x10 grid (one row per class) with DPM-Solver++ and classifier-free guidance, and scores the samples
with a classifier trained on the real digits: the fraction of samples it assigns to the class they were
conditioned on ("class consistency").
"""

from __future__ import annotations

import argparse
import json
import time
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from rich.table import Table
from sklearn.svm import SVC

from dimlab.commands.fit import DimlabCLI
from dimlab.console import make_console
from dimlab.data.digits import load_digits_images, split_train_val, write_digits_shards
from dimlab.eval.split import sample_seeds
from dimlab.sampling.images import save_grid, to_uint8_hwc
from dimlab.sampling.sampler import load_sampler

#: The demo's ``dimlab fit`` config, shipped inside the package (so the demo works from any install).
DEFAULT_CONFIG = resources.files("dimlab.demos") / "digits.yaml"


def train_digit_classifier(size: int = 16, val_fraction: float = 0.1, seed: int = 0):
    """An RBF-SVM on the real digits at ``size`` px, trained on the demo's train split.

    Returns ``(classifier, held_out_accuracy)``; the held-out set is the demo's validation split, which the
    diffusion model never sees either.
    """
    images, labels = load_digits_images(size)
    train, val = split_train_val(len(images), val_fraction, seed)
    features = images.reshape(len(images), -1).astype(np.float32) / 255.0
    clf = SVC(C=10.0, gamma="scale").fit(features[train], labels[train])
    return clf, float((clf.predict(features[val]) == labels[val]).mean())


def class_consistency(clf, images_uint8: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of generated (N, H, W[, 1]) uint8 images that ``clf`` assigns to their conditioning label."""
    features = images_uint8.reshape(len(images_uint8), -1).astype(np.float32) / 255.0
    return float((clf.predict(features) == np.asarray(labels)).mean())


def score_checkpoint(
    ckpt: str | Path,
    per_class: int = 10,
    cfg_scale: float = 2.0,
    steps: int = 50,
    seed: int = 0,
    grid_path: str | Path | None = None,
) -> dict:
    """Sample ``per_class`` digits of each class from ``ckpt`` (EMA) and measure class consistency."""
    sampler = load_sampler(ckpt, ema=True, device="cpu")
    size = sampler.image_size[0]
    labels = [c for c in range(10) for _ in range(per_class)]
    t0 = time.perf_counter()
    images = to_uint8_hwc(
        sampler.sample(
            labels, sample_seeds(seed, range(len(labels))), cfg_scale=cfg_scale, sampler="dpm++", steps=steps
        )
    )
    sample_seconds = time.perf_counter() - t0
    if grid_path is not None:  # 8 px digits: enlarge 4x (nearest) so the grid is readable
        save_grid(images.repeat(4, axis=1).repeat(4, axis=2), Path(grid_path), nrow=per_class)
    clf, held_out = train_digit_classifier(size)
    return {
        "class_consistency": class_consistency(clf, images, np.array(labels)),
        "classifier_held_out_accuracy": held_out,
        "num_samples": len(labels),
        "cfg_scale": cfg_scale,
        "sampler": f"dpm++{steps}",
        "sample_seconds": sample_seconds,
    }


def main(argv: list[str] | None = None) -> int:
    """``python -m dimlab.demos.digits``: shards if needed, training (resumed when a checkpoint exists), scoring."""
    parser = argparse.ArgumentParser(prog="python -m dimlab.demos.digits", description=__doc__)
    parser.add_argument("--config", default=str(DEFAULT_CONFIG))
    parser.add_argument("--data", default="data/digits", help="digit shard folder (written if missing)")
    parser.add_argument("--out", default="runs/demo_digits")
    parser.add_argument("--max-steps", type=int, default=None, help="override trainer.max_steps")
    parser.add_argument("--cfg-scale", type=float, default=4.0, help="U-ViT convention s (w = 1 + s)")
    parser.add_argument("--skip-train", action="store_true", help="score the existing last.ckpt only")
    args = parser.parse_args(argv)

    console = make_console()
    torch.set_flush_denormal(True)  # see dimlab.commands.main.main
    resolution = int(OmegaConf.load(args.config).data.resolution)
    data = Path(args.data)
    if not (data / "manifest.json").is_file():
        console.print(f"[bold]writing {resolution} px digit shards to {data}[/]")
        write_digits_shards(data, size=resolution)
    out = Path(args.out)
    t0 = time.perf_counter()
    if not args.skip_train:
        cli_args = [
            "fit",
            "--config",
            args.config,
            f"--trainer.default_root_dir={out}",
            f"--data.train_shards={data}",
            f"--data.val_shards={data}",
        ]
        if args.max_steps is not None:
            cli_args.append(f"--trainer.max_steps={args.max_steps}")
        last = out / "checkpoints" / "last.ckpt"
        if last.is_file():
            cli_args.append(f"--ckpt_path={last}")
        DimlabCLI(args=cli_args)
    train_seconds = time.perf_counter() - t0
    report = score_checkpoint(
        out / "checkpoints" / "last.ckpt", cfg_scale=args.cfg_scale, grid_path=out / "digits_grid.png"
    )
    report["train_seconds"] = train_seconds
    (out / "demo_report.json").write_text(json.dumps(report, indent=2))
    table = Table(title="dimlab demo: class-conditional DiM on digits")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("training time (s)", f"{train_seconds:.0f}")
    table.add_row(
        "classifier held-out accuracy (real digits)", f"{report['classifier_held_out_accuracy']:.3f}"
    )
    table.add_row(
        f"class consistency of {report['num_samples']} samples", f"{report['class_consistency']:.3f}"
    )
    table.add_row("sampler / CFG scale", f"{report['sampler']} / {report['cfg_scale']}")
    table.add_row("sample grid", str(out / "digits_grid.png"))
    console.print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
