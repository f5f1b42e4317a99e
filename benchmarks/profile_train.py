"""Where a DiM / U-ViT training step spends its GPU time: kernel time by category, launches, and idle gaps.

Issue 9 asks, for every missed throughput target, what limits the step: kernel launches, the scan, the permutations
between scan orders, the skip concatenations, casts. This script answers it from a ``torch.profiler`` trace of the
same real training steps that ``bench_train.py`` times (its ``TrainHarness``: DiffusionModule loss, backward, AdamW,
clip, EMA on a GPU-resident batch), then groups every CUDA kernel by what it does:

=====================  =============================================================================
category               kernels (first matching rule wins, see ``CATEGORIES``)
=====================  =============================================================================
scan fwd / scan bwd    the recurrences: mamba-ssm's ``selective_scan_fwd`` / ``_bwd``, or dimlab's Triton
                       ``scan_fwd_kernel`` / ``scan_bwd_kernel`` (+ the split scan's carry and lambda passes)
causal conv1d          the causal conv1d inside each mixer: causal-conv1d's kernels or dimlab's ``conv_*_kernel``
matmul                 cuBLAS / CUTLASS / nvjet GEMMs (projections, attention in U-ViT)
attention              fused attention kernels (flash / memory-efficient SDPA)
conv (cuDNN)           the patch embedding, the local-enhancement depthwise 3x3 convs
optimizer + EMA        multi-tensor (foreach / fused) AdamW, grad-norm, EMA kernels
gather / scatter       ``index_select`` into each block's scan order and its backward (``index_add``)
cat / copy / cast      concatenations (cond tokens, skip fusion), dtype casts, memcpy / memset
reduction / norm       RMSNorm / LayerNorm statistics, sums, the loss
elementwise            everything pointwise (modulate, gates, residuals, SiLU, ...)
=====================  =============================================================================

Per step it reports GPU busy time (the union of kernel intervals), the un-profiled step wall time measured just
before, and their difference: the time the GPU sat idle waiting for the CPU (launch overhead). With ``--quick
--device cpu`` it profiles a tiny model on CPU and groups CPU operator self time the same way (a smoke test of the
script, not a measurement).

Usage:
    python benchmarks/profile_train.py --models dim_s2,uvit_s2 --batch 128 --out prof_small.json
    python benchmarks/profile_train.py --models dim_h2 --batch 64 --variants eager,compile --out prof_h2.json
    python benchmarks/profile_train.py --quick --device cpu --out /tmp/prof.json
"""

from __future__ import annotations

import argparse
import re
import sys
import warnings
from collections import defaultdict
from pathlib import Path

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import (  # noqa: E402 - shared helpers beside this script
    MODELS,
    ResultLog,
    device_and_models,
    free_memory,
    run_metadata,
    synchronize,
)
from train_harness import TrainHarness, build_module, parse_variants, variant_name  # noqa: E402

#: (category, regex on the kernel or operator name); the first match wins, so specific rules come first.
CATEGORIES: tuple[tuple[str, str], ...] = (
    ("scan fwd", r"selective_scan_fwd|SelectiveScanFn.*forward|scan_fwd_kernel|scan_carry_kernel"),
    ("scan bwd", r"selective_scan_bwd|SelectiveScanFn.*backward|scan_bwd_kernel|scan_bwd_lambda_kernel"),
    ("causal conv1d", r"causal_conv1d|conv_fwd_kernel|conv_bwd_kernel"),
    ("attention", r"flash|fmha|attention|efficient_attention|cudnn_sdpa"),
    ("optimizer + EMA", r"multi_tensor|foreach|fused_adam|FusedAdam|adamw|lerp_|_amp_|norm_scalar"),
    # cuDNN convolutions run as "xmma ... fprop/dgrad/wgrad" kernels, so they are matched before the GEMMs.
    ("conv (cuDNN)", r"fprop|dgrad|wgrad|convolve|conv2d|conv_depthwise|cudnn|aten::(_?convolution|conv)"),
    ("matmul", r"gemm|cutlass|xmma|nvjet|cublas|wgmma|splitKreduce|aten::(mm|addmm|bmm|matmul|linear)$"),
    ("gather / scatter", r"index|gather|scatter"),
    (
        "cat / copy / cast",
        r"CatArray|cat_|aten::cat$|copy|Copy|memcpy|Memcpy|memset|Memset|aten::to$|_to_copy",
    ),
    ("reduction / norm", r"reduce|Reduce|norm|Norm|GammaBeta|softmax|aten::(sum|mean|rsqrt|pow)$"),
    ("elementwise", r"elementwise|vectorized|unrolled|pointwise|triton_|aten::"),
)
_COMPILED = [(name, re.compile(rule)) for name, rule in CATEGORIES]


def categorize(name: str) -> str:
    """The ``CATEGORIES`` entry a kernel (or CPU operator) name belongs to; ``other`` if none matches."""
    for category, rule in _COMPILED:
        if rule.search(name):
            return category
    return "other"


def union_us(intervals: list[tuple[float, float]]) -> float:
    """Total length of the union of ``(start, end)`` intervals (microseconds): GPU busy time across streams."""
    total, current_start, current_end = 0.0, None, None
    for start, end in sorted(intervals):
        if current_end is None or start > current_end:
            if current_end is not None:
                total += current_end - current_start
            current_start, current_end = start, end
        else:
            current_end = max(current_end, end)
    if current_end is not None:
        total += current_end - current_start
    return total


def kernel_records(prof, device: torch.device) -> list[tuple[str, float, float]]:
    """``(name, start_us, end_us)`` of every GPU kernel / memcpy in the trace; on CPU, of every operator by self time.

    CPU operators have no exclusive interval, so on CPU each gets a synthetic ``(0, self_time)`` interval: the busy
    union is then meaningless and the script reports the plain sum instead.
    """
    records = []
    for event in prof.events():
        if device.type == "cuda":
            # User annotations (``record_function`` ranges such as "Optimizer.step#AdamW.step") are mirrored onto
            # the GPU timeline; they span kernels already counted, so they are left out.
            if event.device_type != DeviceType.CUDA or getattr(event, "is_user_annotation", False):
                continue
            records.append((event.name, float(event.time_range.start), float(event.time_range.end)))
        elif event.device_type == DeviceType.CPU and event.self_cpu_time_total > 0:
            records.append((event.name, 0.0, float(event.self_cpu_time_total)))
    return records


def summarize(records: list[tuple[str, float, float]], steps: int, gpu: bool, top: int = 20) -> dict:
    """Per-step time by category and by kernel, launches per step, and (on GPU) the busy union."""
    by_category: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    by_kernel: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for name, start, end in records:
        for table, key in ((by_category, categorize(name)), (by_kernel, name)):
            table[key][0] += end - start
            table[key][1] += 1
    summed_ms = sum(v[0] for v in by_category.values()) / 1e3 / steps
    busy_ms = union_us([(s, e) for _, s, e in records]) / 1e3 / steps if gpu else summed_ms
    categories = [
        {
            "category": key,
            "ms_per_step": total / 1e3 / steps,
            "share": (total / 1e3 / steps) / summed_ms if summed_ms else 0.0,
            "launches_per_step": count / steps,
        }
        for key, (total, count) in sorted(by_category.items(), key=lambda kv: -kv[1][0])
    ]
    kernels = [
        {
            "kernel": key[:160],
            "category": categorize(key),
            "ms_per_step": total / 1e3 / steps,
            "calls_per_step": count / steps,
        }
        for key, (total, count) in sorted(by_kernel.items(), key=lambda kv: -kv[1][0])[:top]
    ]
    return {
        "kernel_ms_per_step": summed_ms,
        "busy_ms_per_step": busy_ms,
        "launches_per_step": len(records) / steps,
        "categories": categories,
        "top_kernels": kernels,
    }


def profile_case(
    harness: TrainHarness, size: int, warmup: int, steps: int, device: torch.device, trace: Path | None
):
    """Time ``steps`` un-profiled steps, then profile ``steps`` more; the summary plus the un-profiled step time."""
    timing = harness.measure(size, warmup, steps)
    batch = harness.batch(size)
    synchronize(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            harness.step(batch)
        synchronize(device)
    if trace is not None:
        trace.parent.mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(trace))
    summary = summarize(kernel_records(prof, device), steps, gpu=device.type == "cuda")
    summary["step_ms_unprofiled"] = timing["step_ms"]
    summary["img_per_s_unprofiled"] = timing["img_per_s"]
    summary["cpu_issue_ms"] = timing["cpu_issue_ms"]
    if device.type == "cuda":
        summary["gpu_idle_ms_per_step"] = max(0.0, timing["step_ms"] - summary["busy_ms_per_step"])
        summary["gpu_idle_share"] = summary["gpu_idle_ms_per_step"] / timing["step_ms"]
    return summary


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="where to write the JSON results")
    parser.add_argument("--models", default="dim_s2", help=f"comma-separated, from {', '.join(MODELS)}")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default: per model)")
    parser.add_argument("--variants", default="eager", help="bench_train.py knob sets, e.g. eager,compile")
    parser.add_argument("--compile-mode", default="default", help="torch.compile mode for the 'compile' knob")
    parser.add_argument(
        "--scan-backend", default="auto", help="DiM scan backend: auto, triton, cuda or torch"
    )
    parser.add_argument("--steps", type=int, default=None, help="profiled steps (default 3; quick 1)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 3; quick 1)")
    parser.add_argument("--top", type=int, default=20, help="how many individual kernels to list")
    parser.add_argument(
        "--trace-dir", type=Path, default=None, help="also write a Chrome trace per case here"
    )
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--quick", action="store_true", help="tiny models on CPU (smoke check)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    device, models = device_and_models(args, "profile_train")
    variants = parse_variants(args.variants)
    steps = args.steps if args.steps is not None else (1 if args.quick else 3)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    if steps < 1 or warmup < 0:
        sys.exit(f"profile_train: need --steps >= 1 and --warmup >= 0, got {steps}, {warmup}")
    warnings.filterwarnings(
        "ignore", message=".*self.log.*but the `self.trainer` reference is not registered"
    )
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True

    meta = run_metadata(
        device, argv, autocast="bf16", steps=steps, warmup=warmup, scan_backend=args.scan_backend
    )
    log = ResultLog(args.out, meta, "profile_train")
    for name in models:
        module = build_module(name, device, args.quick, args.scan_backend)
        size = args.batch or MODELS[name].batch
        if args.quick:
            size = min(size, 4)
        for knobs in variants:
            label = variant_name(knobs)
            record = {"model": name, "variant": label, "batch": size}
            harness = None
            try:
                harness = TrainHarness(module, MODELS[name], device, knobs, args.compile_mode)
                trace = args.trace_dir / f"{name}-{label}-b{size}.json" if args.trace_dir else None
                record.update(profile_case(harness, size, warmup, steps, device, trace))
                record["status"] = "ok"
            except Exception as err:  # noqa: BLE001 - an OOM or compile failure is a result, the run goes on
                record["status"] = f"error: {type(err).__name__}: {err}"
            if harness is not None:
                harness.close()
            log.add(record)
            del harness
            free_memory(device)
        del module
        free_memory(device)
    log.finish()
    print_tables(log.results, meta)
    print(f"results written to {args.out}")
    return 0


def print_tables(results: list[dict], meta: dict) -> None:
    """One table per profiled case: time by category, then the step's busy/idle split."""
    for r in results:
        print(f"\n{r['model']} {r['variant']} batch {r['batch']} on {meta['device']}: ", end="")
        if r.get("status") != "ok":
            print(r.get("status"))
            continue
        print(
            f"step {r['step_ms_unprofiled']:.1f} ms un-profiled, kernels {r['kernel_ms_per_step']:.1f} ms, "
            f"busy {r['busy_ms_per_step']:.1f} ms, {r['launches_per_step']:.0f} launches per step"
        )
        print(f"  {'category':<20}{'ms/step':>10}{'share':>8}{'launches':>10}")
        for c in r["categories"]:
            print(
                f"  {c['category']:<20}{c['ms_per_step']:>10.2f}{100 * c['share']:>7.1f}%"
                f"{c['launches_per_step']:>10.0f}"
            )


if __name__ == "__main__":
    raise SystemExit(main())
