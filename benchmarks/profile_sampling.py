"""Where one sampling step's GPU time goes: every kernel of a guided NFE summed by what it does, and the idle gaps.

The sampling counterpart of ``profile_train.py``. One NFE is ``bench_sampling.py``'s: the backbone on ``[x; x]``
(classifier-free guidance, so sampling batch 1 and 8 are forward batches 2 and 16) under bf16 autocast and
``torch.no_grad``, SD-VAE latents of resolution / 8 per side, random weights. For each (model, resolution, batch)
it times ``--nfe`` un-profiled NFEs (median, CUDA events), then profiles ``--nfe`` more and sums every CUDA kernel
into ``profile_train.CATEGORIES`` (scan forward, conv1d, GEMMs, attention, gathers, casts, norms, pointwise).
GPU busy time is the union of kernel intervals; the un-profiled NFE time minus the busy time is the time the GPU
waited for the CPU (launch gaps), which dominates small batches. ``--cuda-graphs`` profiles a CUDA-graph replay
of the NFE instead (the launch gaps then vanish).

Usage:
    python benchmarks/profile_sampling.py --out prof_sampling.json      # DiM-H/2, U-ViT-H/2; 256/1024/2048 px; 1, 8
    python benchmarks/profile_sampling.py --quick --device cpu --out /tmp/ps.json     # smoke check
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import (  # noqa: E402 - shared helpers beside this script
    ResultLog,
    free_memory,
    is_oom,
    median_seconds,
    run_metadata,
    synchronize,
)
from bench_sampling import (  # noqa: E402
    QUICK_BATCHES,
    QUICK_RESOLUTIONS,
    build_model,
    graphed,
    nfe_function,
    parse_ints,
)
from dimlab.diffusion.fast_eval import CompiledNetwork  # noqa: E402
from profile_train import kernel_records, summarize  # noqa: E402

MODELS = ("dim_h2", "uvit_h2")
RESOLUTIONS = (256, 1024, 2048)
BATCHES = (1, 8)


def profile_nfe(fn, device: torch.device, nfe: int, warmup: int) -> dict:
    """Median un-profiled ms per NFE, then the per-NFE kernel summary of ``nfe`` profiled ones."""
    ms = median_seconds(fn, device, warmup, nfe) * 1e3
    synchronize(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(nfe):
            fn()
        synchronize(device)
    summary = summarize(kernel_records(prof, device), nfe, gpu=device.type == "cuda")
    summary["ms_per_nfe_unprofiled"] = ms
    if device.type == "cuda":
        summary["gpu_idle_ms_per_nfe"] = max(0.0, ms - summary["busy_ms_per_step"])
        summary["gpu_idle_share"] = summary["gpu_idle_ms_per_nfe"] / ms
    return summary


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="where to write the JSON results")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated presets")
    parser.add_argument("--resolutions", default=None, help="pixel resolutions (default 256,1024,2048)")
    parser.add_argument("--batches", default=None, help="sampling batch sizes (default 1,8)")
    parser.add_argument("--cfg-scale", type=float, default=0.4, help="U-ViT-convention guidance scale s")
    parser.add_argument("--cuda-graphs", action="store_true", help="profile a CUDA-graph replay of the NFE")
    parser.add_argument(
        "--compile", action="store_true", help="profile the backbone through torch.compile (Inductor)"
    )
    parser.add_argument("--scan-backend", default="auto", help="DiM scan backend: auto, triton, cuda, torch")
    parser.add_argument("--nfe", type=int, default=None, help="timed and profiled NFEs (default 3; quick 1)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed NFEs first (default 2; quick 1)")
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--quick", action="store_true", help="tiny models on small latents (smoke check)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("profile_sampling: --device cuda but no CUDA device is visible; use --device cpu --quick")
    if args.cuda_graphs and device.type != "cuda":
        sys.exit("profile_sampling: --cuda-graphs needs --device cuda")
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    resolutions = parse_ints(args.resolutions, "--resolutions") if args.resolutions else None
    batches = parse_ints(args.batches, "--batches") if args.batches else None
    resolutions = resolutions or list(QUICK_RESOLUTIONS if args.quick else RESOLUTIONS)
    batches = batches or list(QUICK_BATCHES if args.quick else BATCHES)
    nfe = args.nfe if args.nfe is not None else (1 if args.quick else 3)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    meta = run_metadata(
        device, argv, cfg_scale=args.cfg_scale, cuda_graphs=args.cuda_graphs, compile=args.compile, nfe=nfe
    )
    log = ResultLog(args.out, meta, "profile_sampling")
    for name in models:
        model = build_model(name, device, args.quick, "fp32", args.scan_backend)
        net = CompiledNetwork(model) if args.compile else None
        for batch in batches:
            for resolution in resolutions:
                record = {"model": name, "batch": batch, "forward_batch": 2 * batch, "resolution": resolution}
                failure = None
                try:
                    fn = nfe_function(model, batch, resolution, args.cfg_scale, device, net)
                    if args.cuda_graphs:
                        fn = graphed(fn, device)
                    record.update(profile_nfe(fn, device, nfe, warmup), status="ok")
                except Exception as err:  # noqa: BLE001 - OOM is a result too
                    failure = "oom" if is_oom(err) else f"error: {type(err).__name__}: {err}"
                if failure is not None:
                    record["status"] = failure
                fn = None
                free_memory(device)
                log.add(record)
                if record["status"] == "ok":
                    print_case(record)
        del model, net
        free_memory(device)
    log.finish()
    print(f"results written to {args.out}")
    return 0


def print_case(r: dict) -> None:
    """One case's category table."""
    idle = f", GPU idle {r['gpu_idle_ms_per_nfe']:.2f} ms" if "gpu_idle_ms_per_nfe" in r else ""
    print(
        f"\n{r['model']} batch {r['batch']} at {r['resolution']} px: {r['ms_per_nfe_unprofiled']:.2f} ms per NFE "
        f"un-profiled, busy {r['busy_ms_per_step']:.2f} ms{idle}, {r['launches_per_step']:.0f} launches"
    )
    for c in r["categories"]:
        print(
            f"  {c['category']:<22}{c['ms_per_step']:>9.2f} ms {100 * c['share']:>6.1f}% {c['launches_per_step']:>8.0f}"
        )


if __name__ == "__main__":
    raise SystemExit(main())
