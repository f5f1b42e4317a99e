"""Training speed the way users train: ``dimlab fit`` through the Lightning Trainer on latent shards.

What it does, in one process tree on one GPU:

1. writes synthetic latent shards with the layout of ``dimlab shards latents`` at 256 px (8 x 32 x 32 float16
   moments and the flipped copy; the writer of ``bench_loader.py``), unless ``--shards`` names existing ones;
2. times the data loader alone (``ShardDataModule``'s training stream at ``--batch``, with ``--workers``
   workers): samples/s in all and per worker, beside what the training step consumes;
3. runs ``dimlab fit --config RECIPE`` on those shards for ``--steps`` optimizer steps at ``--batch`` (no
   validation, no sample grids, no periodic checkpoint) and reads the images/s that ``summary.json`` reports
   (``RunSummary``: measured after the first steps, so compilation and the first batch are not counted);
4. with ``--compare bench_train.json`` (the same model and batch timed by ``bench_train.py`` in the same run)
   states fit's images/s as a share of the harness's: the Trainer, the EMA, the loss and the loader together
   should cost at most 10%.

The fit's extra arguments (after ``--``) are passed on, e.g. ``-- --model.compile=true``.

Usage:
    python benchmarks/bench_fit_e2e.py --steps 40 --batch 64 --out runs/fit_e2e.json --compare train_h2.json
    python benchmarks/bench_fit_e2e.py --quick --out /tmp/e.json   # CPU smoke check: a tiny DiM, 6 steps
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import ResultLog, run_metadata  # noqa: E402
from bench_loader import time_loader, write_latent_shards  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
#: A DiM small enough for a CPU smoke run of the whole path (``--quick``).
QUICK_BACKBONE = [
    "--model.backbone.init_args.hidden_size=64",
    "--model.backbone.init_args.depth=3",
    "--model.backbone.init_args.input_size=32",
]


def fit_command(args, shards: Path, root: Path) -> list[str]:
    """The ``dimlab fit`` command line: the recipe on the shards, validation, grids and checkpoints off."""
    command = [
        sys.executable, "-m", "dimlab", "fit", "--config", str(args.config),
        f"--data.train_shards={shards}", "--data.val_shards=null", "--data.kind=latents",
        f"--data.batch_size={args.batch}", f"--data.num_workers={args.workers}",
        f"--trainer.max_steps={args.steps}", "--trainer.devices=1", "--trainer.limit_val_batches=0",
        "--trainer.val_check_interval=null", "--trainer.callbacks=null", "--trainer.logger=false",
        f"--trainer.default_root_dir={root}", f"--trainer.log_every_n_steps={max(1, args.steps // 4)}",
        "--checkpoint.every_n_train_steps=1000000000", "--checkpoint.save_last=false",
        "--model.vae_path=unused-latent-shards-need-no-vae",
    ]  # fmt: skip
    if args.scan_backend:
        command.append(f"--model.backbone.init_args.scan_backend={args.scan_backend}")
    if args.quick:
        command += [*QUICK_BACKBONE, "--trainer.precision=32-true", "--trainer.accelerator=cpu"]
    return command + list(args.fit_args)


def harness_rate(path: Path | None, model: str, batch: int) -> float | None:
    """images/s of ``model`` at ``batch`` in a bench_train.py JSON file (None: not there)."""
    if path is None or not path.exists():
        return None
    for record in json.loads(path.read_text()).get("results", []):
        if record.get("model") == model and record.get("batch") == batch and record.get("img_per_s"):
            return float(record["img_per_s"])
    return None


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line options; everything after ``--`` goes to ``dimlab fit``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    fit_args = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "experiments/imagenet256/dim_h2.yaml")
    parser.add_argument("--model-name", default="dim_h2", help="the model's name in the --compare file")
    parser.add_argument("--shards", type=Path, help="existing latent shards (default: write synthetic ones)")
    parser.add_argument("--samples", type=int, default=4096, help="synthetic samples to write")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--loader-batches", type=int, default=60)
    parser.add_argument("--scan-backend", default="triton", help="DiM's scan_backend ('' keeps the recipe's)")
    parser.add_argument("--compare", type=Path, help="bench_train.py JSON of the same model and batch")
    parser.add_argument(
        "--quick", action="store_true", help="CPU smoke check: tiny DiM, few steps and samples"
    )
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    args.fit_args = fit_args
    if args.quick:
        args.samples, args.steps, args.batch, args.workers, args.loader_batches = 256, 8, 8, 1, 5
        args.scan_backend = "torch"
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench_fit_e2e_") as tmp:
        shards = args.shards
        if shards is None:
            shards = Path(tmp) / "latents"
            start = time.perf_counter()
            write_latent_shards(shards, args.samples, shard_size=max(64, args.samples // 16))
            print(
                f"bench_fit_e2e: wrote {args.samples} synthetic latent samples in {time.perf_counter() - start:.1f} s"
            )
        loader = time_loader(shards, "latents", 256, args.workers, args.loader_batches, args.batch)
        per_worker = loader["samples_per_s"] / max(1, args.workers)
        print(
            f"bench_fit_e2e: loader {loader['samples_per_s']:.0f} samples/s with {args.workers} workers "
            f"({per_worker:.0f} per worker), batch {args.batch}"
        )
        root = Path(tmp) / "run"
        command = fit_command(args, shards, root)
        env = dict(
            os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])
        )
        start = time.perf_counter()
        proc = subprocess.run(command, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        summary_path = root / "summary.json"
        if proc.returncode != 0 or not summary_path.exists():
            sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
            print(f"bench_fit_e2e: dimlab fit failed (exit {proc.returncode})", file=sys.stderr)
            return 1
        summary = json.loads(summary_path.read_text())
    fit_rate = float(summary["images_per_sec"])
    harness = harness_rate(args.compare, args.model_name, args.batch)
    record = {
        "config": str(args.config.relative_to(ROOT) if args.config.is_relative_to(ROOT) else args.config),
        "batch": args.batch,
        "steps": args.steps,
        "workers": args.workers,
        "scan_backend": args.scan_backend,
        "fit_images_per_s": fit_rate,
        "fit_wall_s": wall,
        "final_loss": summary.get("final_loss"),
        "peak_mem_gb": summary.get("metrics", {}).get("perf/peak_mem_gb"),
        "loader_samples_per_s": loader["samples_per_s"],
        "loader_samples_per_s_per_worker": per_worker,
        "loader_headroom": loader["samples_per_s"] / fit_rate if fit_rate > 0 else None,
        "harness_images_per_s": harness,
        "fit_share_of_harness": fit_rate / harness if harness else None,
        "fit_args": args.fit_args,
    }
    share = f", {100 * record['fit_share_of_harness']:.1f}% of bench_train's {harness:.1f}" if harness else ""
    print(
        f"bench_fit_e2e: dimlab fit {fit_rate:.1f} images/s{share}; the loader gives "
        f"{record['loader_headroom']:.1f}x what the step consumes"
    )
    log = ResultLog(
        args.out, run_metadata(torch.device("cuda" if torch.cuda.is_available() else "cpu"), None), "fit_e2e"
    )
    log.add(record)
    log.finish()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
