"""Sampling cost: time per network evaluation (NFE) with classifier-free guidance, DiM-H/2 vs U-ViT-H/2.

One NFE is one call of :func:`dimlab.diffusion.guidance.cfg_model_fn` around the backbone: the conditional and the
unconditional pass run as ONE forward over ``[x; x]``, so sampling batch 1 and 8 are forward batches 2 and 16.
Inputs are SD-VAE latents (4 channels, resolution / 8 per side); both backbones accept any grid at run time (their
position tables are resized bilinearly), so one model per family serves every resolution. Weights are random
(timing does not depend on them), fp32 under bf16 autocast by default (``--weights bf16`` casts them), under
``torch.no_grad``.

Each case is timed with CUDA events (perf_counter on CPU): median of ``--reps`` after ``--warmup`` calls. Peak
memory is the allocator's peak during the case; ``act_gib`` is that peak minus what was allocated before (weights
and inputs), i.e. the activations of one NFE. Out-of-memory is caught and reported, and larger resolutions of the
same model and batch are then skipped. ``--cuda-graphs`` also times a CUDA-graph replay of the same NFE, which
removes the kernel-launch overhead that dominates small batches. ``--compile`` also times the backbone through
``torch.compile`` (:class:`dimlab.diffusion.fast_eval.CompiledNetwork`, Inductor, one graph per shape), alone and,
with ``--cuda-graphs``, replayed from a CUDA graph; ``first_call_s`` is the wall time of a case's first NFE, which
for the compiled variant is its compilation.

The crossover is the smallest resolution from which DiM's time per NFE stays below U-ViT's, per batch and variant,
plus the resolution where the time ratio crosses 1 by linear interpolation of log(ratio) between the two measured
neighbours. The analytic MAC ratio (:mod:`dimlab.flops`) is printed beside it.

Usage:
    python benchmarks/bench_sampling.py --out runs/bench_sampling.json --cuda-graphs
    python benchmarks/bench_sampling.py --out runs/s.json --cuda-graphs --compile --batches 1 --resolutions 1024,1280
    python benchmarks/bench_sampling.py --quick --device cpu --out /tmp/sampling.json     # smoke check
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import (  # noqa: E402 - shared helpers beside this script
    ResultLog,
    free_memory,
    is_oom,
    median_seconds,
    run_metadata,
    synchronize,
)
from dimlab.data.vae import SD_VAE_FACTOR  # noqa: E402
from dimlab.diffusion.fast_eval import CompiledNetwork  # noqa: E402
from dimlab.diffusion.guidance import cfg_model_fn  # noqa: E402
from dimlab.flops import backbone_cost  # noqa: E402
from dimlab.models.presets import build_backbone  # noqa: E402

MODELS = ("dim_h2", "uvit_h2")
RESOLUTIONS = (256, 512, 768, 1024, 1280, 1536, 2048)
BATCHES = (1, 8)
#: --quick: tiny versions of the presets on small latents (CPU smoke check).
QUICK_OVERRIDES = {
    "dim": dict(input_size=8, hidden_size=32, depth=3, d_state=4),
    "uvit": dict(input_size=8, hidden_size=32, depth=3, num_heads=2),
}
QUICK_RESOLUTIONS = (64, 128)
QUICK_BATCHES = (1, 2)


def build_model(
    name: str, device: torch.device, quick: bool, weights: str, scan_backend: str
) -> torch.nn.Module:
    """Backbone preset ``name`` with random weights, in eval mode, gradients off, on ``device``."""
    family = "dim" if name.startswith("dim") else "uvit"
    overrides = dict(QUICK_OVERRIDES[family]) if quick else {}
    if family == "dim":
        overrides["scan_backend"] = scan_backend
    with torch.device(device):
        model = build_backbone(name, **overrides)
    model.eval().requires_grad_(False)
    if weights == "bf16":
        model.to(torch.bfloat16)
    return model


def nfe_function(
    model: torch.nn.Module, batch: int, resolution: int, cfg_scale: float, device: torch.device, net=None
):
    """A zero-argument callable running one guided NFE of ``net`` (default ``model``) on static inputs."""
    side = resolution // SD_VAE_FACTOR
    g = torch.Generator(device="cpu").manual_seed(resolution * 100 + batch)
    x = torch.randn(batch, model.in_channels, side, side, generator=g).to(device)
    t = torch.full((batch,), 500.0, device=device)
    num_classes = model.num_classes
    y = torch.randint(0, max(num_classes, 1), (batch,), generator=g).to(device)
    guided = cfg_model_fn(model if net is None else net, y, null_class=num_classes, cfg_scale=cfg_scale)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16)

    def nfe() -> torch.Tensor:
        with torch.no_grad(), autocast:
            return guided(x, t)

    return nfe


def graphed(nfe: Callable[[], torch.Tensor], device: torch.device) -> Callable[[], None]:
    """Capture ``nfe`` (static inputs) in a CUDA graph after a side-stream warm-up; returns the replay."""
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for _ in range(2):
            nfe()
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        nfe()
    return graph.replay


def time_case(model, batch, resolution, cfg_scale, device, warmup, reps, use_graph, net=None) -> dict:
    """Median ms per NFE, TFLOP/s and memory for one (model, batch, resolution, variant); ``net`` is what runs
    (``model`` or its compiled form)."""
    free_memory(device)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    nfe = nfe_function(model, batch, resolution, cfg_scale, device, net)
    start = time.perf_counter()
    nfe()
    synchronize(device)
    first_call = time.perf_counter() - start
    fn = graphed(nfe, device) if use_graph else nfe
    seconds = median_seconds(fn, device, warmup, reps)
    synchronize(device)
    side = resolution // SD_VAE_FACTOR
    cost = backbone_cost(model, (side, side))
    forward_batch = 2 * batch if cfg_scale else batch
    record = {
        "ms_per_nfe": seconds * 1e3,
        "first_call_s": first_call,
        "tokens": cost.tokens,
        "gmacs_per_nfe": cost.gmacs * forward_batch,
        "tflops_per_s": cost.flops(forward_batch, training=False) / seconds / 1e12,
    }
    if cuda:
        peak = torch.cuda.max_memory_allocated(device)
        record["peak_mem_gib"] = peak / 2**30
        record["act_gib"] = (peak - before) / 2**30
    del fn, nfe
    return record


def crossover(results: list[dict], batch: int, variant: str) -> dict:
    """Where DiM becomes faster than U-ViT for one batch and variant (see the module docstring)."""
    times: dict[str, dict[int, float]] = {}
    for r in results:
        if r["batch"] == batch and r["variant"] == variant and r["status"] == "ok":
            times.setdefault(r["family"], {})[r["resolution"]] = r["ms_per_nfe"]
    dim, uvit = times.get("dim", {}), times.get("uvit", {})
    common = sorted(set(dim) & set(uvit))
    ratios = [(res, dim[res] / uvit[res]) for res in common]
    first = None
    for k, (res, _) in enumerate(ratios):
        if all(ratio < 1 for _, ratio in ratios[k:]):
            first = res
            break
    interpolated = None
    for (r0, q0), (r1, q1) in zip(ratios, ratios[1:], strict=False):
        if q0 >= 1 > q1:
            w = math.log(q0) / (math.log(q0) - math.log(q1))
            interpolated = r0 + w * (r1 - r0)
    return {
        "batch": batch,
        "variant": variant,
        "ratios": {str(res): q for res, q in ratios},
        "dim_faster_from": first,
        "ratio_one_at": interpolated,
    }


def sweep_resolutions(
    log, model, name, family, batch, variant, resolutions, args, warmup, reps, net=None
) -> None:
    """Time one model, batch and variant at every resolution, stopping after an OOM or a too-slow NFE."""
    device = torch.device(args.device)
    stopped = None
    for resolution in resolutions:
        record = {"model": name, "family": family, "batch": batch}
        record["forward_batch"] = 2 * batch if args.cfg_scale else batch
        record.update({"resolution": resolution, "variant": variant})
        if stopped:
            log.add({**record, "status": f"skipped ({stopped})"})
            continue
        failure = None
        try:
            timing = time_case(
                model,
                batch,
                resolution,
                args.cfg_scale,
                device,
                warmup,
                reps,
                variant.endswith("graphs"),
                net if variant.startswith("compile") else None,
            )
            record.update(timing, status="ok")
        except Exception as err:  # noqa: BLE001 - OOM and capture failures are results too
            failure = "oom" if is_oom(err) else f"error: {type(err).__name__}: {err}"
        if failure is not None:  # handled outside the except block so the traceback frees the activations
            record["status"] = failure
            stopped = f"{failure.split(':')[0]} at {resolution}"
            free_memory(device)
        elif record["ms_per_nfe"] / 1e3 > args.max_nfe_seconds:
            stopped = f"{resolution} px took {record['ms_per_nfe'] / 1e3:.1f} s per NFE"
        log.add(record)


def parse_ints(text: str, name: str) -> list[int]:
    """Comma-separated positive ints; a clear error otherwise."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        sys.exit(f"bench_sampling: {name} must be comma-separated integers, got {text!r}")
    if not values or any(v < 1 for v in values):
        sys.exit(f"bench_sampling: {name} must be positive integers, got {text!r}")
    return values


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="where to write the JSON results")
    parser.add_argument("--models", default=",".join(MODELS), help="a DiM and a U-ViT preset")
    parser.add_argument("--resolutions", default=None, help="pixel resolutions (latent = px / 8)")
    parser.add_argument("--batches", default=None, help="sampling batch sizes (forward batch is twice)")
    parser.add_argument("--cfg-scale", type=float, default=0.4, help="U-ViT-convention guidance scale s")
    parser.add_argument("--cuda-graphs", action="store_true", help="also time a CUDA-graph replay per case")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="also time the backbone through torch.compile (and with graphs)",
    )
    parser.add_argument("--weights", choices=("fp32", "bf16"), default="fp32", help="weight dtype")
    parser.add_argument("--scan-backend", default="auto", help="DiM scan backend: auto, cuda or torch")
    parser.add_argument("--warmup", type=int, default=None, help="untimed NFEs per case (default 2; quick 1)")
    parser.add_argument("--reps", type=int, default=None, help="timed NFEs per case (default 5; quick 2)")
    parser.add_argument(
        "--max-nfe-seconds",
        type=float,
        default=10.0,
        help="skip larger resolutions of a model/batch once one NFE takes longer than this",
    )
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument(
        "--quick", action="store_true", help="tiny models and latents (smoke check; CPU is fine)"
    )
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("bench_sampling: --device cuda but no CUDA device is visible; use --device cpu --quick")
    if args.cuda_graphs and device.type != "cuda":
        sys.exit("bench_sampling: --cuda-graphs needs --device cuda")
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    default_res, default_batches = (
        (QUICK_RESOLUTIONS, QUICK_BATCHES) if args.quick else (RESOLUTIONS, BATCHES)
    )
    resolutions = parse_ints(args.resolutions, "--resolutions") if args.resolutions else list(default_res)
    batches = parse_ints(args.batches, "--batches") if args.batches else list(default_batches)
    bad = [r for r in resolutions if r % (2 * SD_VAE_FACTOR)]
    if bad:
        sys.exit(f"bench_sampling: resolutions {bad} are not multiples of 16 (latent /8, patch 2)")
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    reps = args.reps if args.reps is not None else (2 if args.quick else 5)
    variants = ["eager", "graphs"] if args.cuda_graphs else ["eager"]
    if args.compile:
        variants += ["compile", "compile+graphs"] if args.cuda_graphs else ["compile"]
    torch.backends.cuda.matmul.allow_tf32 = True

    meta = run_metadata(
        device,
        argv,
        autocast="bf16",
        weights=args.weights,
        cfg_scale=args.cfg_scale,
        warmup=warmup,
        reps=reps,
        latent_factor=SD_VAE_FACTOR,
        scan_backend=args.scan_backend,
    )
    log = ResultLog(args.out, meta, "bench_sampling")
    for name in models:
        family = "dim" if name.startswith("dim") else "uvit" if name.startswith("uvit") else None
        if family is None:
            sys.exit(f"bench_sampling: --models entries must be dim_* or uvit_* presets, got {name!r}")
        model = build_model(name, device, args.quick, args.weights, args.scan_backend)
        net = CompiledNetwork(model) if args.compile else None
        for batch in batches:
            for variant in variants:
                sweep_resolutions(
                    log, model, name, family, batch, variant, resolutions, args, warmup, reps, net
                )
        del model, net
        free_memory(device)

    results = log.results
    crossovers = [crossover(results, b, v) for b in batches for v in variants]
    log.finish(crossover=crossovers)
    print_table(results, crossovers, resolutions, batches, variants, meta)
    print(f"results written to {args.out}")
    return 0


def print_table(results, crossovers, resolutions, batches, variants, meta) -> None:
    """Per-NFE ms of both families side by side, the DiM/U-ViT ratio, and the crossover lines."""
    print(f"\nTime per NFE with CFG (ms, median), bf16 autocast, {meta['weights']} weights, {meta['device']}")
    index = {(r["family"], r["batch"], r["variant"], r["resolution"]): r for r in results}
    header = (
        f"{'batch':>5} {'variant':<15}{'px':>6}{'DiM ms':>10}{'U-ViT ms':>10}{'ratio':>7}{'MAC ratio':>10}"
    )
    header += f"{'DiM GiB':>9}{'U-ViT GiB':>10}"
    print(header)
    print("-" * len(header))

    def cell(r, key, fmt):
        if r is None:
            return "-"
        if r["status"] != "ok":
            return r["status"].split(" ")[0][:8]
        return format(r[key], fmt) if key in r else "-"

    for batch in batches:
        for variant in variants:
            for res in resolutions:
                d = index.get(("dim", batch, variant, res))
                u = index.get(("uvit", batch, variant, res))
                both = d is not None and u is not None and d["status"] == u["status"] == "ok"
                ratio = f"{d['ms_per_nfe'] / u['ms_per_nfe']:.2f}" if both else "-"
                macs = f"{d['gmacs_per_nfe'] / u['gmacs_per_nfe']:.2f}" if both else "-"
                print(
                    f"{batch:>5} {variant:<15}{res:>6}{cell(d, 'ms_per_nfe', '.2f'):>10}"
                    f"{cell(u, 'ms_per_nfe', '.2f'):>10}{ratio:>7}{macs:>10}"
                    f"{cell(d, 'peak_mem_gib', '.1f'):>9}{cell(u, 'peak_mem_gib', '.1f'):>10}"
                )
    for c in crossovers:
        at = f"{c['ratio_one_at']:.0f} px" if c["ratio_one_at"] is not None else "not bracketed"
        print(
            f"crossover batch {c['batch']} {c['variant']}: DiM faster from "
            f"{c['dim_faster_from'] or 'never (in range)'} px; time ratio = 1 at {at}"
        )


if __name__ == "__main__":
    raise SystemExit(main())
