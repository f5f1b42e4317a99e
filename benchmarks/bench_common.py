"""Helpers shared by the benchmark scripts beside this file: timing, run metadata and result files, OOM handling,
the largest-batch search, device / model selection, and the table of benchmarked models.

The scripts import from this module (and the training harness from ``train_harness.py``), never from each other.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from dimlab.models.scan import kernels_available


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_once(fn: Callable[[], object], device: torch.device) -> float:
    """Wall time of one ``fn()`` (CUDA events on GPU, so queued work before it is not counted)."""
    if device.type == "cuda":
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        return start.elapsed_time(stop) / 1e3
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def median_seconds(fn: Callable[[], object], device: torch.device, warmup: int, reps: int) -> float:
    """Median wall time of ``fn()`` over ``reps`` runs after ``warmup`` runs (CUDA events on GPU)."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    return statistics.median(seconds_once(fn, device) for _ in range(reps))


def interleaved_seconds(
    fns: dict[str, Callable[[], object]], device: torch.device, warmup: int, reps: int
) -> dict[str, dict[str, float]]:
    """Median, min and max wall time of each of ``fns``, timed round-robin: repetition r runs every function once
    before repetition r + 1 starts.

    A/B comparisons need this: the card's clock and temperature drift over a run, and back-to-back repetitions
    put a whole drift on one variant (on an H200 the same forward kernel read up to 35% apart in three columns of
    one back-to-back run, benchmarks/RESULTS.md, third session). Round-robin spreads it over all of them.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            times[name].append(seconds_once(fn, device))
    return {name: {"median": statistics.median(t), "min": min(t), "max": max(t)} for name, t in times.items()}


def copy_bandwidth(device: torch.device, quick: bool) -> float:
    """Measured device-to-device copy bandwidth, bytes read + written per second."""
    numel = (16 if quick else 256) * 2**20  # 64 MiB / 1 GiB of fp32
    src = torch.empty(numel, device=device)
    dst = torch.empty_like(src)
    seconds = median_seconds(lambda: dst.copy_(src), device, warmup=2, reps=5 if quick else 20)
    return 2 * src.numel() * src.element_size() / seconds


def git_commit() -> str:
    """Current commit of the checkout, or 'unknown'; ``DIMLAB_COMMIT`` overrides it (a copied checkout whose
    ``.git`` is stale, as on the device machine)."""
    if os.environ.get("DIMLAB_COMMIT"):
        return os.environ["DIMLAB_COMMIT"]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def matmul_tflops(device: torch.device, quick: bool) -> float:
    """bf16 dense matmul rate measured on ``device`` (TFLOP/s): the practical ceiling for MFU."""
    n = 256 if quick or device.type != "cuda" else 8192
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    seconds = median_seconds(lambda: a @ b, device, warmup=2 if quick else 5, reps=3 if quick else 20)
    return 2 * n**3 / seconds / 1e12


def is_oom(err: BaseException) -> bool:
    """True for CUDA allocation failures, whichever layer raised them (caching allocator, cuBLAS, kernels)."""
    if isinstance(err, torch.OutOfMemoryError):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and ("out of memory" in text or "ALLOC_FAILED" in text)


def free_memory(device: torch.device) -> None:
    """Drop unreachable tensors and return cached blocks, so the next trial starts from a clean pool."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def device_name(device: torch.device) -> str:
    """Human-readable device name for the JSON metadata."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"


def run_metadata(device: torch.device, argv: list[str] | None, **extra) -> dict:
    """Card, software versions, commit, date and command line: what RESULTS.md needs for every figure."""
    meta = {
        "device": device_name(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "commit": git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
    }
    meta["mamba_kernels"] = kernels_available()
    meta.update(extra)
    return meta


class ResultLog:
    """Results of one benchmark run, rewritten to the JSON file after every record.

    A run cut short (a stage timeout in ``run_gpu_suite.sh``, a crash) still leaves every finished record on disk,
    with ``"complete": false``.
    """

    def __init__(self, path: Path, meta: dict, tag: str) -> None:
        self.path, self.meta, self.tag = path, meta, tag
        self.results: list[dict] = []
        self.extra: dict = {}
        path.parent.mkdir(parents=True, exist_ok=True)

    def add(self, record: dict) -> None:
        """Keep ``record``, print it as one JSON line, and rewrite the file."""
        self.results.append(record)
        print(f"{self.tag}: {json.dumps(record)}", flush=True)
        self._write(complete=False)

    def finish(self, **extra) -> None:
        """Write the final file (``"complete": true``) with any ``extra`` top-level entries."""
        self.extra.update(extra)
        self._write(complete=True)

    def _write(self, complete: bool) -> None:
        payload = {"meta": {**self.meta, "complete": complete}, "results": self.results, **self.extra}
        self.path.write_text(json.dumps(payload, indent=2))


def find_max_batch(fits: Callable[[int], bool], start: int, limit: int, granularity: int = 8) -> int:
    """Largest batch ``b <= limit`` with ``fits(b)``, assuming fitting is monotone in ``b``; 0 if ``fits(1)`` fails.

    Doubles from ``start`` until a failure (or ``limit``), then bisects the gap down to ``granularity`` (or 1 below
    it). Each probe is one call of ``fits``, which for training runs one full step and catches OOM.
    """
    if start < 1 or limit < 1 or granularity < 1:
        raise ValueError(f"start, limit and granularity must be >= 1, got {start}, {limit}, {granularity}")
    good, bad = 0, None
    b = min(start, limit)
    while bad is None:  # doubling phase
        if fits(b):
            good = b
            if b >= limit:
                return good
            b = min(2 * b, limit)
        else:
            bad = b
    resolution = max(1, min(granularity, good // 8))  # ~12% steps near the bottom, `granularity` higher up
    while bad - good > resolution:
        mid = good + max(1, (bad - good) // 2 // resolution) * resolution
        if fits(mid):
            good = mid
        else:
            bad = mid
    return good


@dataclass(frozen=True)
class ModelCase:
    """A benchmarked backbone: its preset, the recipe bits that change the step, and default batches."""

    preset: str
    schedule: str  # vp_sde (CIFAR-10 pixels) or sd_discrete (ImageNet latents)
    class_conditional: bool
    clip: float | None  # gradient_clip_val of the experiment config
    batch: int  # default batch (--batch overrides)


MODELS: dict[str, ModelCase] = {
    "dim_s2": ModelCase("dim_s2", "vp_sde", False, None, 128),
    "dim_l2": ModelCase("dim_l2", "sd_discrete", True, 1.0, 64),
    "dim_h2": ModelCase("dim_h2", "sd_discrete", True, 1.0, 64),
    "dim_h2_512": ModelCase("dim_h2_512", "sd_discrete", True, 1.0, 16),
    "uvit_s2": ModelCase("uvit_s2", "vp_sde", False, None, 128),
    "uvit_h2": ModelCase("uvit_h2", "sd_discrete", True, 1.0, 64),
    "uvit_h2_512": ModelCase("uvit_h2_512", "sd_discrete", True, 1.0, 16),
}
#: --quick: the same presets shrunk to a few-kilobyte model on an 8x8 input (CPU smoke check).
QUICK_OVERRIDES = {
    "dim": dict(input_size=8, hidden_size=32, depth=3, d_state=4),
    "uvit": dict(input_size=8, hidden_size=32, depth=3, num_heads=2),
}


def device_and_models(args: argparse.Namespace, script: str, known=MODELS) -> tuple[torch.device, list[str]]:
    """The ``--device`` (exits if CUDA is asked for but absent) and the ``--models`` list (exits on names not in
    ``known``)."""
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit(f"{script}: --device cuda but no CUDA device is visible; use --device cpu --quick")
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in known]
    if unknown:
        sys.exit(f"{script}: unknown --models {unknown}; expected some of {list(known)}")
    return device, models


def kernel_bench_setup(
    args: argparse.Namespace, script: str, cases: dict, quick_cases: dict, default_reps: int
) -> tuple[torch.device, int, int, dict]:
    """The prologue of the Triton kernel benchmarks (``--device``, ``--quick``, ``--cases``, ``--warmup``,
    ``--reps``): ``(device, warmup, reps, {case: shape})``; exits with a one-line message on a missing CUDA device,
    a CPU run without ``TRITON_INTERPRET=1`` or an unknown case."""
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit(f"{script}: --device cuda but no CUDA device is visible; use --device cpu --quick")
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
        sys.exit(f"{script}: on the CPU the Triton kernels need TRITON_INTERPRET=1 in the environment")
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    reps = args.reps if args.reps is not None else (1 if args.quick else default_reps)
    if args.quick:
        return device, warmup, reps, dict(quick_cases)
    names = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in names if c not in cases]
    if unknown:
        sys.exit(f"{script}: unknown --cases {unknown}; expected some of {list(cases)}")
    return device, warmup, reps, {c: cases[c] for c in names}
