"""Compile the Triton kernels a run will need, in parallel worker processes, before the run times anything.

Triton compiles each kernel specialisation (dtype, flags, launch configuration, which integer arguments are 1 or
multiples of 16) the first time it is launched and keeps it in its on-disk cache (``TRITON_CACHE_DIR``, default
``~/.triton/cache``). The selective-scan backward takes seconds to tens of seconds to compile, and a benchmark or
test run needs several; compiling them one after the other inside a timed run wastes a GPU lease. This script runs
each job once in its own process (they share the cache), so later processes only load the binaries.

Jobs (``--jobs``, comma-separated):

    mixer:D:B:L[:nograd]   the fused Triton Mamba mixer of width D on (B, L, D) bf16-autocast tokens, forward and
                           backward (or forward only): what training DiM-S/2 (D=512), L/2 (1024), H/2 (1536) and
                           sampling it launch
    scan:CASE[:CONFIG]     one case of bench_scan.py (its CASES), with an optional ScanConfig like
                           ``t_sub=2+fwd_warps=1`` (fields joined by '+')

Usage:
    python benchmarks/warm_triton_cache.py --jobs mixer:512:128:366,mixer:1536:2:4494:nograd --workers 8
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def run_job(job: str) -> str:
    """Run one job (module docstring); returns a one-line report."""
    start = time.perf_counter()
    kind, *fields = job.split(":")
    try:
        if kind == "mixer":
            from dimlab.models.mamba import Mamba

            d_model, batch, length = (int(f) for f in fields[:3])
            grad = not (len(fields) > 3 and fields[3] == "nograd")
            mixer = Mamba(d_model, d_state=16, d_conv=3, expand=2, scan_backend="triton", device="cuda")
            x = torch.randn(batch, length, d_model, device="cuda", requires_grad=grad)
            with torch.set_grad_enabled(grad), torch.autocast("cuda", dtype=torch.bfloat16):
                y = mixer(x)
            if grad:
                y.float().sum().backward()
        elif kind == "scan":
            from bench_scan import CASES, parse_configs, run_case

            batch, length, dim = CASES[fields[0]]
            config = parse_configs(fields[1].replace("+", ","))[0] if len(fields) > 1 else {}
            run_case("triton", config, batch, length, dim, torch.device("cuda"), warmup=0, reps=1, grad=True)
        else:
            raise ValueError(f"unknown job kind {kind!r} (mixer, scan)")
        torch.cuda.synchronize()
        status = "ok"
    except Exception as err:  # noqa: BLE001 - reported; the timed run will report it again
        status = f"{type(err).__name__}: {err}"[:300]
    return f"{job}: {time.perf_counter() - start:.1f} s {status}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", required=True, help="comma-separated jobs (see the docstring)")
    parser.add_argument("--workers", type=int, default=8, help="parallel processes (default 8)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("warm_triton_cache: needs a CUDA device")
    jobs = [j.strip() for j in args.jobs.split(",") if j.strip()]
    start = time.perf_counter()
    failed = 0
    with multiprocessing.get_context("spawn").Pool(max(1, min(args.workers, len(jobs)))) as pool:
        for line in pool.imap_unordered(run_job, jobs):
            failed += not line.endswith(" ok")
            print(f"warm_triton_cache: {line}", flush=True)
    print(
        f"warm_triton_cache: {len(jobs)} jobs in {time.perf_counter() - start:.0f} s, {failed} failed",
        flush=True,
    )
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
