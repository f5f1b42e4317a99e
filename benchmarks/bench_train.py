"""Training throughput, model FLOP/s, MFU and peak memory of DiM / U-ViT training steps on one GPU.

What one timed step is. The harness drives :class:`dimlab.lit.module.DiffusionModule` directly, WITHOUT the
Lightning Trainer, using the module's own pieces in the order the Trainer runs them under ``precision:
bf16-mixed``::

    optimizer.zero_grad(set_to_none=True)
    with torch.autocast("cuda", torch.bfloat16):      # fp32 master weights, bf16 compute
        loss = module.training_step(batch, i)         # noise, times, CFG label dropout, backbone, eps-MSE
    loss.backward()
    module.on_after_backward()                        # the step's gradient norm is now stale
    module.on_before_optimizer_step(optimizer)        # the norm it logs is computed once (logging is a no-op)
    clip_to_norm(optimizer, clip, norm)               # by that norm; 1.0 for the ImageNet recipes, none for CIFAR-10
    optimizer.step(); scheduler.step()                # AdamW from module.configure_optimizers(): fused on CUDA
    module.ema.update(module.backbone)                # what module.optimizer_step adds after the step

The batch is a GPU-resident random tensor reused every step, so the data loader is not measured. What the Trainer
adds on top (progress bar, logger connector, per-step ``.item()`` syncs) is not included: these numbers are the
ceiling the Trainer can reach.

FLOPs are counted analytically by :mod:`dimlab.flops` (docs/backbone.md "Compute": linear/conv MACs + selective scan
``9 L E N / 2``, times 2 for FLOPs, times 3 for forward + backward). MFU is reported against the H100 datasheet
dense bf16 peak (989 TFLOP/s, ``--peak-tflops``), against the 790 TFLOP/s matmul ceiling measured on H100
(``--ceiling-tflops``), and against the bf16 matmul rate measured by this script at start-up.

Variants (``--variants``, comma-separated, each a ``+``-joined set of knobs; ``eager`` = none) run on the same
built model so that before/after comparisons share everything else:

* ``ckpt``         activation checkpointing (the backbones' ``gradient_checkpointing`` attribute),
* ``compile``      ``torch.compile`` of the backbone with ``--compile-mode`` (what the module's ``compile=True``
                   does, in the default mode),
* ``graphs``       CUDA graphs of the backbone forward + backward (``torch.cuda.make_graphed_callables``); the
                   loss, optimizer and EMA stay eager,
* ``unfused``      the optimizer-step tail as it was before :mod:`dimlab.lit.optim_step` (for A/B in one run):
                   multi-tensor instead of fused AdamW, the logged grad norm from one kernel per parameter,
                   ``clip_grad_norm_`` computing the norm again, and the EMA as one ``lerp_`` per tensor.

``--find-max-batch`` bisects the largest batch whose full training step fits (OOM caught), per variant, then
times that batch too. Each step's phases are also timed with CUDA events (forward, backward, optimizer incl.
hook/clip/scheduler, EMA) together with the CPU time spent issuing the step: when the CPU time is close to the step
time, the step is launch/overhead bound.

Usage:
    python benchmarks/bench_train.py --models dim_s2 --batch 128 --out runs/train_s2.json
    python benchmarks/bench_train.py --models dim_h2 --batch 64 --find-max-batch --variants eager,ckpt \\
        --out runs/train_h2_mem.json
    python benchmarks/bench_train.py --quick --device cpu --out /tmp/train.json     # smoke check, tiny models
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import (  # noqa: E402 - shared helpers beside this script
    MODELS,
    ResultLog,
    device_and_models,
    device_name,
    find_max_batch,
    free_memory,
    is_oom,
    matmul_tflops,
    run_metadata,
)
from dimlab.flops import H100_BF16_DENSE_TFLOPS, H100_BF16_MEASURED_MATMUL_TFLOPS, backbone_cost  # noqa: E402
from dimlab.models.scan import resolve_backend  # noqa: E402
from train_harness import TrainHarness, build_module, parse_variants, variant_name  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="where to write the JSON results")
    parser.add_argument("--models", default="dim_s2", help=f"comma-separated, from {', '.join(MODELS)}")
    parser.add_argument("--batch", default=None, help="comma-separated batch sizes (default: per model)")
    parser.add_argument("--find-max-batch", action="store_true", help="bisect the largest fitting batch")
    parser.add_argument("--max-batch-limit", type=int, default=2048, help="upper end of the batch search")
    parser.add_argument(
        "--variants", default=None, help="e.g. eager,compile,compile+unfused (see the docstring)"
    )
    parser.add_argument("--grad-ckpt", action="store_true", help="add the 'ckpt' knob to the single variant")
    parser.add_argument("--compile", action="store_true", help="add the 'compile' knob to the single variant")
    parser.add_argument(
        "--cuda-graphs", action="store_true", help="add the 'graphs' knob to the single variant"
    )
    parser.add_argument(
        "--unfused",
        action="store_true",
        help="add the 'unfused' knob (the old step tail) to the single variant",
    )
    parser.add_argument("--compile-mode", default="default", help="torch.compile mode for the 'compile' knob")
    parser.add_argument(
        "--scan-backend",
        default="auto",
        help="DiM scan backend(s), comma-separated for side-by-side runs: auto, triton, cuda, torch",
    )
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 10; quick 2)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 3; quick 1)")
    parser.add_argument("--peak-tflops", type=float, default=H100_BF16_DENSE_TFLOPS)
    parser.add_argument("--ceiling-tflops", type=float, default=H100_BF16_MEASURED_MATMUL_TFLOPS)
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument(
        "--quick", action="store_true", help="tiny models, 2 steps (smoke check; CPU is fine)"
    )
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    device, models = device_and_models(args, "bench_train")
    if args.variants:
        variants = parse_variants(args.variants)
    else:
        flags = {
            "ckpt": args.grad_ckpt,
            "compile": args.compile,
            "graphs": args.cuda_graphs,
            "unfused": args.unfused,
        }
        variants = [{k for k, on in flags.items() if on}]
    steps = args.steps if args.steps is not None else (2 if args.quick else 10)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    if steps < 1 or warmup < 0:
        sys.exit(f"bench_train: need --steps >= 1 and --warmup >= 0, got {steps}, {warmup}")
    # training_step / on_before_optimizer_step call self.log, which is a no-op without a Trainer: say it once here.
    warnings.filterwarnings(
        "ignore", message=".*self.log.*but the `self.trainer` reference is not registered"
    )
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True

    ceiling = matmul_tflops(device, args.quick)
    print(f"bench_train: measured bf16 matmul {ceiling:.0f} TFLOP/s on {device_name(device)}", flush=True)
    meta = run_metadata(
        device,
        argv,
        autocast="bf16",
        steps=steps,
        warmup=warmup,
        compile_mode=args.compile_mode,
        scan_backend=args.scan_backend,
        measured_matmul_tflops=ceiling,
        peak_tflops=args.peak_tflops,
        ceiling_tflops=args.ceiling_tflops,
        harness="DiffusionModule pieces without the Lightning Trainer; GPU-resident batch",
    )
    log = ResultLog(args.out, meta, "bench_train")
    backends = [b.strip() for b in args.scan_backend.split(",") if b.strip()]
    runs = [
        (name, b) for name in models for b in (backends if MODELS[name].preset.startswith("dim") else ["-"])
    ]
    for name, backend in runs:
        case = MODELS[name]
        module = build_module(name, device, args.quick, backend)
        cost = backbone_cost(module.backbone)
        n_params = sum(p.numel() for p in module.backbone.parameters())
        batches = [int(b) for b in args.batch.split(",")] if args.batch else [case.batch]
        if args.quick:
            batches = [min(b, 4) for b in batches]
        for knobs in variants:
            label = variant_name(knobs)
            base = {"model": name, "variant": label, "params": n_params, "tokens": cost.tokens}
            if backend != "-":
                base["scan_backend"] = resolve_backend(backend, device)
            base["gmacs_per_sample"] = cost.gmacs
            try:
                harness = TrainHarness(module, case, device, knobs, args.compile_mode)
            except Exception as err:  # noqa: BLE001 - reported per case, the suite goes on
                log.add({**base, "status": f"error: {type(err).__name__}: {err}"})
                continue
            sizes = list(batches)
            if args.find_max_batch:
                limit = min(16, args.max_batch_limit) if args.quick else args.max_batch_limit
                record = {**base, "kind": "max_batch", "limit": limit, "status": "ok"}
                try:
                    largest = find_max_batch(harness.fits, start=min(sizes), limit=limit)
                except Exception as err:  # noqa: BLE001 - e.g. a graph capture failure; reported, suite goes on
                    largest, record["status"] = 0, f"error in batch search: {type(err).__name__}: {err}"
                record["max_batch"] = largest
                log.add(record)
                if largest and largest not in sizes:
                    sizes.append(largest)
            for size in sizes:
                record = {**base, "kind": "throughput", "batch": size}
                failure = None
                try:
                    record.update(harness.measure(size, warmup, steps))
                    flops = cost.flops(size, training=True)
                    achieved = flops / (record["step_ms"] / 1e3)
                    record["model_tflops_per_s"] = achieved / 1e12
                    record["mfu_datasheet"] = achieved / (args.peak_tflops * 1e12)
                    record["mfu_vs_ceiling"] = achieved / (args.ceiling_tflops * 1e12)
                    record["mfu_vs_measured_matmul"] = achieved / (ceiling * 1e12)
                    record["status"] = "ok"
                except Exception as err:  # noqa: BLE001 - OOM and compile/graph failures are results too
                    failure = "oom" if is_oom(err) else f"error: {type(err).__name__}: {err}"
                if failure is not None:
                    record["status"] = failure
                    harness.optimizer.zero_grad(set_to_none=True)
                    free_memory(device)
                log.add(record)
            harness.close()
            del harness
            free_memory(device)
        del module
        free_memory(device)

    log.finish()
    print_table(log.results, meta)
    print(f"results written to {args.out}")
    return 0


def print_table(results: list[dict], meta: dict) -> None:
    """The short summary table printed last."""
    print(
        f"\nTraining step, bf16 autocast, {meta['device']}; MFU vs {meta['peak_tflops']:.0f} (datasheet) / "
        f"{meta['ceiling_tflops']:.0f} (matmul ceiling) / {meta['measured_matmul_tflops']:.0f} (measured) TFLOP/s"
    )
    header = (
        f"{'model':<12}{'scan':<7}{'variant':<22}{'batch':>6}{'img/s':>9}{'step ms':>9}{'cpu ms':>8}{'TFLOP/s':>9}"
        f"{'MFU':>7}{'vs790':>7}{'mem GiB':>9}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        if r.get("kind") == "max_batch":
            print(
                f"{r['model']:<12}{r.get('scan_backend', '-'):<7}{r['variant']:<22}{'max batch':>15}: "
                f"{r['max_batch']} (limit {r['limit']})"
            )
            continue
        if r.get("status") != "ok":
            scan = r.get("scan_backend", "-")
            print(f"{r['model']:<12}{scan:<7}{r['variant']:<22}{r.get('batch', ''):>6}  {r['status'][:60]}")
            continue
        mem = f"{r['peak_mem_gib']:>9.1f}" if "peak_mem_gib" in r else f"{'-':>9}"
        print(
            f"{r['model']:<12}{r.get('scan_backend', '-'):<7}{r['variant']:<22}{r['batch']:>6}{r['img_per_s']:>9.1f}{r['step_ms']:>9.1f}"
            f"{r['cpu_issue_ms']:>8.1f}{r['model_tflops_per_s']:>9.1f}{100 * r['mfu_datasheet']:>6.1f}%"
            f"{100 * r['mfu_vs_ceiling']:>6.1f}%{mem}"
        )


if __name__ == "__main__":
    raise SystemExit(main())
