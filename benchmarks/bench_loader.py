"""Samples/s of ``ShardDataModule`` training batches on synthetic shards, per loading configuration.

Cases (batch 64, resampled training stream, shuffle buffer 256):

* jpeg256   256 px RGB JPEG (quality 95) shards, ``kind=images``,
* jpeg512   512 px RGB JPEG (quality 95) shards, ``kind=images``,
* latent32  8 x 32 x 32 float16 VAE moments (+ the flipped copy), ``kind=latents``.

Synthetic images are smooth (bicubic-upsampled 8 x 8 colour noise plus mild grain), so JPEG sizes
and decode costs are close to natural photos (pure noise would compress ~5x worse and decode slower).
Each case is timed with ``--workers`` DataLoader workers (and optionally also in the main process,
``--workers 0``, the cleanest per-core figure). The first batch (worker start, shuffle-buffer fill) is
excluded. Besides wall-clock samples/s, the CPU seconds of the main process and its workers are read from
/proc: samples per CPU second is the per-core rate, and it stays meaningful on a shared, loaded machine.

Usage:
    python benchmarks/bench_loader.py --workers 0 2 --json runs/bench_loader.json
    python benchmarks/bench_loader.py --quick            # smoke check, small data
"""

from __future__ import annotations

import argparse
import datetime
import gc
import io
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dimlab.data.array_source import write_array_shards
from dimlab.data.datamodule import ShardDataModule
from dimlab.data.writers import fingerprint, plan_jobs, sample_key, write_shards


def smooth_images(count: int, resolution: int, seed: int) -> np.ndarray:
    """(count, res, res, 3) uint8 photo-like images: upsampled colour noise plus grain."""
    rng = np.random.default_rng(seed)
    images = np.empty((count, resolution, resolution, 3), dtype=np.uint8)
    for index in range(count):
        small = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
        base = np.asarray(small.resize((resolution, resolution), Image.BICUBIC), dtype=np.int16)
        grain = rng.integers(-6, 7, base.shape, dtype=np.int16)
        images[index] = np.clip(base + grain, 0, 255).astype(np.uint8)
    return images


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _build_latent_shard(job, sink, advance) -> None:
    start, items = job.payload
    rng = np.random.default_rng(start)
    for offset, label in enumerate(items):
        moments = rng.standard_normal((2, 8, 32, 32)).astype(np.float16)
        members = {
            "moments.npy": _npy(moments[0]),
            "moments_flip.npy": _npy(moments[1]),
            "cls": str(label).encode(),
        }
        sink.write(sample_key(job.split, start + offset), members, label)


def write_latent_shards(out: Path, count: int, shard_size: int) -> None:
    """Synthetic latent shards with the layout of ``dimlab shards latents`` at 256 px."""
    labels = [int(label) for label in np.random.default_rng(0).integers(0, 1000, count)]
    fields = {
        "kind": "latents",
        "source": "synthetic",
        "resolution": 256,
        "moments_shape": [8, 32, 32],
        "moments_dtype": "float16",
        "num_classes": 1000,
    }
    write_shards(
        out,
        plan_jobs({"train": labels}, shard_size),
        _build_latent_shard,
        manifest_fields=fields,
        plan_hash=fingerprint({"bench": "latents", "count": count}, []),
        workers=1,
    )


def write_jpeg_shards(out: Path, count: int, resolution: int, shard_size: int) -> None:
    """Synthetic JPEG image shards (same layout as ``dimlab shards imagefolder``)."""
    images = smooth_images(count, resolution, seed=resolution)
    labels = np.random.default_rng(1).integers(0, 1000, count)
    write_array_shards(
        out,
        {"train": (images, labels)},
        source="synthetic",
        source_id=f"{count}x{resolution}",
        class_names=[str(i) for i in range(1000)],
        image_format="jpeg",
        shard_size=shard_size,
        workers=os.cpu_count() or 1,
    )


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds used so far by the given processes (Linux /proc)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


def child_pids(parent: int) -> list[int]:
    """Processes whose parent is ``parent`` (the DataLoader workers, once started)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == parent:
                children.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return children


def time_loader(
    data_dir: Path, kind: str, resolution: int, workers: int, batches: int, batch_size: int
) -> dict:
    """Iterate ``batches`` + 1 training batches; time all but the first, in wall and CPU seconds.

    The CPU-second rate (samples per CPU second of the main process and its workers) is the per-core
    throughput and stays meaningful when other jobs share the machine; the wall rate does not.
    """
    data = ShardDataModule(
        str(data_dir),
        resolution=resolution,
        num_classes=1000,
        kind=kind,
        channels=3,
        batch_size=batch_size,
        num_workers=workers,
        samples_per_epoch=(batches + 1) * batch_size * max(workers, 1) * 2,
        shuffle_buffer=256,
        pin_memory=False,
    )
    data.setup("fit")
    loader = data.train_dataloader()
    iterator = iter(loader)
    next(iterator)
    pids = [os.getpid(), *child_pids(os.getpid())]
    cpu_start, start = cpu_seconds(pids), time.perf_counter()
    for _ in range(batches):
        batch = next(iterator)
    elapsed, cpu = time.perf_counter() - start, cpu_seconds(pids) - cpu_start
    # stop the persistent workers now, so later forks (the next case's shard writer) do not inherit them
    iterator.close()
    del iterator, loader
    gc.collect()
    samples = batches * batch_size
    return {
        "samples_per_s": samples / elapsed,
        "samples_per_cpu_s": samples / cpu if cpu > 0 else float("nan"),
        "wall_s": elapsed,
        "cpu_s": cpu,
        "batch_shape": list(batch["x"].shape),
        "skipped": data.skipped_samples,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--workers", type=int, nargs="+", default=[0, 2], help="DataLoader worker counts to time"
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=30, help="timed batches per case")
    parser.add_argument("--quick", action="store_true", help="small data and few batches (smoke check)")
    parser.add_argument("--json", default="runs/bench_loader.json", help="where to write the results")
    args = parser.parse_args(argv)
    # DataLoader workers run torch single-threaded; do the same in the main process so workers=0 measures
    # one core (intra-op threads only add spin-waiting for these small per-batch ops).
    torch.set_num_threads(1)
    scale = 8 if args.quick else 1
    batches = 3 if args.quick else args.batches
    cases = [
        ("jpeg256", "images", 256, 2048 // scale),
        ("jpeg512", "images", 512, 768 // scale),
        ("latent32", "latents", 256, 8192 // scale),
    ]
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_loader_") as tmp:
        for name, kind, resolution, count in cases:
            data_dir = Path(tmp) / name
            if kind == "latents":
                write_latent_shards(data_dir, count, shard_size=1024 // scale)
            else:
                write_jpeg_shards(data_dir, count, resolution, shard_size=256 // scale)
            shard_bytes = sum(p.stat().st_size for p in data_dir.glob("*.tar"))
            for workers in args.workers:
                result = time_loader(data_dir, kind, resolution, workers, batches, args.batch_size)
                results.append(
                    {"case": name, "workers": workers, "bytes_per_sample": shard_bytes / count, **result}
                )
                print(f"{name} workers={workers}: {result['samples_per_s']:.0f} samples/s", file=sys.stderr)
    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": platform.platform(),
        "cpu_count": os.cpu_count(),
        "load_average_1min_at_end": os.getloadavg()[0],
        "command": " ".join([Path(sys.argv[0]).name, *(sys.argv[1:] if argv is None else argv)]),
        "batch_size": args.batch_size,
        "results": results,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.json}")
    print(f"load average (1 min) at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"{'case':<10} {'workers':>7} {'KB/sample':>9} {'samples/s (wall)':>16} {'samples/CPU-s':>13}")
    for row in results:
        print(
            f"{row['case']:<10} {row['workers']:>7} {row['bytes_per_sample'] / 1024:>9.1f} "
            f"{row['samples_per_s']:>16.0f} {row['samples_per_cpu_s']:>13.0f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
