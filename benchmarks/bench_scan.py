"""Time the selective scan alone: dimlab's Triton kernels vs mamba-ssm's CUDA kernel, against the exp floor.

Shapes (batch x L x E, N = 16, bf16 inputs, fp32 A/D/delta_bias, z gating, softplus on delta + bias) are DiM's:

    s2_train      128 x   366 x 1024   DiM-S/2 training on CIFAR-10 (16x16 tokens + pads)
    l2_train       64 x   366 x 2048   DiM-L/2 training at 256 px
    h2_train       64 x   366 x 3072   DiM-H/2 training at 256 px
    h2_512_train   16 x  1230 x 3072   DiM-H/2 fine-tuning at 512 px
    h2_256_cfg      2 x   366 x 3072   DiM-H/2 sampling at 256 px, batch 1 with CFG
    h2_1024_cfg     2 x  4494 x 3072   DiM-H/2 sampling at 1024 px, batch 1 with CFG
    h2_1024_b8_cfg 16 x  4494 x 3072   DiM-H/2 sampling at 1024 px, batch 8 with CFG
    h2_2048_cfg     2 x 17166 x 3072   DiM-H/2 sampling at 2048 px, batch 1 with CFG

Each case times ``fwd`` (no autograd: sampling) and ``fwd+bwd`` (forward keeping what the backward needs, then
the backward of a fixed output gradient: training), median (and min / max) of ``--reps`` CUDA-event timings after
``--warmup``. By default the backends and configurations of a case are timed interleaved: repetition r runs every
variant once before repetition r + 1, so that a drift of the card's clock falls on all of them alike
(``--timing sequential`` times each variant's repetitions back to back, as the runs recorded up to the third
session of 2026-12-03 did).
mamba-ssm gets its native (batch, E, L) contiguous layout; the Triton kernels get channel-last (batch, L, E).

The floor. A scan step does one exp per (batch, token, channel, state): B*L*E*N of them, and the multiprocessors'
special-function units do 16 per clock each. floor_fwd = B L E N / (SMs * 16 * clock) (clock 1.98 GHz on an
H200 under load, ``--clock-ghz``); the backward needs the decays again, so floor_fwdbwd = 2 * floor_fwd. Memory
traffic is lower at these shapes (each bf16 (token, channel) value read or written once: 8 bytes forward, 20
fwd+bwd) and is reported as ``bytes_floor_ms`` against the measured copy bandwidth.

``--configs`` times several launch configurations of the Triton kernels (``ScanConfig`` fields, e.g.
``fwd_warps=1,t_sub=4;fwd_warps=4``) side by side; ``--precompile`` first compiles every (config, shape) in
parallel worker processes, so that compilation does not serialise the run.

Usage:
    python benchmarks/bench_scan.py --out runs/bench_scan.json
    python benchmarks/bench_scan.py --cases h2_train --configs "fwd_warps=4;fwd_warps=1;t_sub=4" --out c.json
    TRITON_INTERPRET=1 python benchmarks/bench_scan.py --device cpu --quick --out /tmp/s.json   # smoke check
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import multiprocessing
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import (  # noqa: E402
    ResultLog,
    free_memory,
    interleaved_seconds,
    is_oom,
    kernel_bench_setup,
    median_seconds,
    run_metadata,
    synchronize,
)
from dimlab.kernels import ScanConfig, selective_scan, set_scan_config  # noqa: E402
from dimlab.kernels.scan import num_segments, parse_scan_config  # noqa: E402
from dimlab.models.scan import selective_scan_torch  # noqa: E402

CASES = {
    "s2_train": (128, 366, 1024),
    "l2_train": (64, 366, 2048),
    "h2_train": (64, 366, 3072),
    "h2_512_train": (16, 1230, 3072),
    "h2_256_cfg": (2, 366, 3072),
    "h2_1024_cfg": (2, 4494, 3072),
    "h2_1024_b8_cfg": (16, 4494, 3072),
    "h2_2048_cfg": (2, 17166, 3072),
}
QUICK_CASES = {"tiny": (1, 9, 32), "tiny_split": (1, 40, 32)}
D_STATE = 16


def make_inputs(batch, length, dim, n, device, channel_last: bool) -> dict:
    """Scan inputs as a Mamba mixer makes them (S4D-real A, a fresh dt_proj bias), bf16 activations."""
    g = torch.Generator(device=device).manual_seed(0)

    def act(*shape, scale=1.0):
        return (torch.randn(*shape, device=device, generator=g) * scale).to(torch.bfloat16)

    shape_x = (batch, length, dim) if channel_last else (batch, dim, length)
    shape_bc = (batch, length, n) if channel_last else (batch, n, length)
    return {
        "u": act(*shape_x),
        "delta": act(*shape_x, scale=0.5),
        "A": -torch.arange(1, n + 1, device=device, dtype=torch.float32).repeat(dim, 1),
        "B": act(*shape_bc),
        "C": act(*shape_bc),
        "D": torch.ones(dim, device=device),
        "z": act(*shape_x),
        "delta_bias": torch.log(torch.expm1(torch.empty(dim, device=device).uniform_(1e-3, 0.1))),
    }


def scan_fn(backend: str):
    """The scan callable of a backend, taking the dict of make_inputs."""
    if backend == "triton":
        return lambda inputs: selective_scan(**inputs, delta_softplus=True)
    if backend == "cuda":
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

        return lambda inputs: selective_scan_fn(**inputs, delta_softplus=True)
    if backend == "torch":
        return lambda inputs: selective_scan_torch(**inputs, delta_softplus=True)
    raise ValueError(f"bench_scan: unknown backend {backend!r} (triton, cuda, torch)")


def exp_floor_ms(batch, length, dim, n, device, clock_ghz) -> float:
    """The exp-bound time of one forward pass (module docstring), ms."""
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1
    return batch * length * dim * n / (sms * 16 * clock_ghz * 1e9) * 1e3


def parse_configs(text: str | None) -> list[dict]:
    """'fwd_warps=1,t_sub=4;fwd_warps=4' -> [{'fwd_warps': 1, 't_sub': 4}, {'fwd_warps': 4}] ([{}] if empty)."""
    if not text:
        return [{}]
    try:
        return [parse_scan_config(item, "bench_scan: --configs") for item in text.split(";")]
    except ValueError as err:
        raise SystemExit(str(err)) from None


def config_name(config: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(config.items())) or "default"


def prepare_case(backend, config, batch, length, dim, device, grad: bool) -> tuple[dict, dict]:
    """Inputs for one backend / config / shape: the record's static fields (the Triton split) and the callables to
    time, ``"fwd"`` (no autograd: sampling) and with ``grad`` ``"fwdbwd"`` (training); each call runs under
    ``config``, set around it, so that variants can be timed interleaved."""
    cfg = ScanConfig(**config) if backend == "triton" else None

    def under_config(f):
        if cfg is None:
            return f

        def run():
            previous = set_scan_config(cfg)
            try:
                return f()
            finally:
                set_scan_config(previous)

        return run

    inputs = make_inputs(batch, length, dim, D_STATE, device, channel_last=backend == "triton")
    fn = scan_fn(backend)
    record = {}
    if cfg is not None:  # how many time segments run in parallel, under this config
        record.update(
            under_config(
                lambda: {
                    "segments_fwd": num_segments(batch, dim, length, device, training=False),
                    "segments_train": num_segments(batch, dim, length, device, training=True),
                }
            )()
        )

    def fwd():
        with torch.no_grad():
            return fn(inputs)

    calls = {"fwd": under_config(fwd)}
    if grad:
        leaves = {k: v.detach().requires_grad_() for k, v in inputs.items()}
        grad_out = torch.randn_like(leaves["u"])

        def fwd_bwd():
            out = fn(leaves)
            torch.autograd.grad(out, list(leaves.values()), grad_out)

        calls["fwdbwd"] = under_config(fwd_bwd)
    return record, calls


def run_case(backend, config, batch, length, dim, device, warmup, reps, grad: bool) -> dict:
    """Median fwd (and fwd+bwd) ms and peak memory of one backend / config / shape, timed on its own."""
    record, calls = prepare_case(backend, config, batch, length, dim, device, grad)
    for part, call in calls.items():
        record[f"{part}_ms"] = median_seconds(call, device, warmup, reps) * 1e3
    if "fwdbwd" in calls:
        record["peak_mem_gib"] = peak_memory_gib(calls["fwdbwd"], device)
    return record


def peak_memory_gib(call, device) -> float | None:
    """The allocator's peak during one ``call()`` (None off CUDA)."""
    if device.type != "cuda":
        call()
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    call()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) / 2**30


def time_variants(variants: dict, device, warmup: int, reps: int, interleave: bool) -> None:
    """Fill each variant's record with ``fwd_ms`` / ``fwdbwd_ms`` (median) and their min / max, and the peak
    memory of one forward + backward. ``variants``: name -> (record, calls) of :func:`prepare_case`; a variant
    whose warm-up fails gets that status and is left out of the timing. ``interleave`` times the variants
    round-robin (:func:`bench_common.interleaved_seconds`), else each on its own, back to back."""
    alive = {}
    for name, (record, calls) in variants.items():
        try:
            for call in calls.values():
                for _ in range(max(1, warmup)):
                    call()
            synchronize(device)
            alive[name] = (record, calls)
        except Exception as err:  # noqa: BLE001 - OOM or a kernel failure is a result too
            record["status"] = "oom" if is_oom(err) else f"error: {type(err).__name__}: {err}"[:300]
    parts = sorted({part for _, calls in alive.values() for part in calls}, key=["fwd", "fwdbwd"].index)
    for part in parts:
        fns = {name: calls[part] for name, (_, calls) in alive.items() if part in calls}
        groups = [fns] if interleave else [{name: fn} for name, fn in fns.items()]
        for group in groups:
            for name, t in interleaved_seconds(group, device, 0, reps).items():
                record = alive[name][0]
                record[f"{part}_ms"] = t["median"] * 1e3
                record[f"{part}_ms_min"], record[f"{part}_ms_max"] = t["min"] * 1e3, t["max"] * 1e3
    for record, calls in alive.values():
        if "fwdbwd" in calls:
            record["peak_mem_gib"] = peak_memory_gib(calls["fwdbwd"], device)
        record["status"] = "ok"


def _precompile_one(item) -> str:
    """Worker: run one (config, shape) once so that its kernels land in Triton's on-disk cache."""
    config, (batch, length, dim), device_name, grad = item
    device = torch.device(device_name)
    start = time.perf_counter()
    try:
        run_case("triton", config, batch, length, dim, device, warmup=0, reps=1, grad=grad)
        status = "ok"
    except Exception as err:  # noqa: BLE001 - reported, the main run reports it again
        status = f"{type(err).__name__}: {err}"[:200]
    return f"{config_name(config)} {batch}x{length}x{dim}: {time.perf_counter() - start:.1f}s {status}"


def precompile(configs, shapes, device, grad, workers) -> None:
    """Compile every (config, shape) in parallel processes sharing Triton's cache directory."""
    items = [(c, s, str(device), grad) for c in configs for s in shapes]
    start = time.perf_counter()
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(min(workers, len(items))) as pool:
        for line in pool.imap_unordered(_precompile_one, items):
            print(f"bench_scan: precompiled {line}", flush=True)
    print(f"bench_scan: precompile of {len(items)} items took {time.perf_counter() - start:.0f}s", flush=True)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="where to write the JSON results")
    parser.add_argument(
        "--device", default="cuda", help="cuda (default) or cpu (with --quick: the interpreter)"
    )
    parser.add_argument("--quick", action="store_true", help="tiny shapes, few repetitions (smoke check)")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, from {', '.join(CASES)}")
    parser.add_argument("--backends", default="triton,cuda", help="comma-separated: triton, cuda, torch")
    parser.add_argument("--configs", default=None, help="';'-separated Triton launch configs (docstring)")
    parser.add_argument("--no-grad", action="store_true", help="forward only")
    parser.add_argument("--precompile", type=int, default=0, help="compile in this many processes first")
    parser.add_argument("--clock-ghz", type=float, default=1.98, help="SM clock of the floor (H200: 1.98)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed runs first (default 3; quick 1)")
    parser.add_argument("--reps", type=int, default=None, help="timed runs (default 10; quick 1)")
    parser.add_argument(
        "--timing",
        choices=("interleaved", "sequential"),
        default="interleaved",
        help="per case, time the backends / configs round-robin (default) or each on its own, back to back",
    )
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    device, warmup, reps, cases = kernel_bench_setup(args, "bench_scan", CASES, QUICK_CASES, 10)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if "cuda" in backends:
        have_mamba = (
            importlib.util.find_spec("selective_scan_cuda") is not None
        )  # the scan alone needs no conv
        if device.type != "cuda" or not have_mamba:
            print(f"bench_scan: skipping backend 'cuda' (device {device.type}, mamba-ssm scan {have_mamba})")
            backends.remove("cuda")
    configs = parse_configs(args.configs)
    if args.precompile and "triton" in backends and device.type == "cuda":
        precompile(configs, list(cases.values()), device, not args.no_grad, args.precompile)

    meta = run_metadata(
        device, argv, clock_ghz=args.clock_ghz, d_state=D_STATE, warmup=warmup, reps=reps, timing=args.timing
    )
    if device.type == "cuda":
        numel = 256 * 2**20
        src, dst = torch.empty(numel, device=device), torch.empty(numel, device=device)
        meta["copy_gbps"] = 2 * 4 * numel / median_seconds(lambda: dst.copy_(src), device, 2, 10) / 1e9
        del src, dst
    log = ResultLog(args.out, meta, "bench_scan")
    for case, (batch, length, dim) in cases.items():
        floor = exp_floor_ms(batch, length, dim, D_STATE, device, args.clock_ghz)
        bytes_fwd = 8 * batch * length * dim
        variants = {}
        for backend in backends:
            for config in configs if backend == "triton" else [{}]:
                record = {
                    "case": case,
                    "shape": [batch, length, dim, D_STATE],
                    "backend": backend,
                    "config": config_name(config) if backend == "triton" else "-",
                    "floor_fwd_ms": floor,
                    "floor_fwdbwd_ms": 2 * floor,
                }
                if "copy_gbps" in meta:
                    record["bytes_floor_fwd_ms"] = bytes_fwd / (meta["copy_gbps"] * 1e9) * 1e3
                    record["bytes_floor_fwdbwd_ms"] = 2.5 * bytes_fwd / (meta["copy_gbps"] * 1e9) * 1e3
                try:
                    static, calls = prepare_case(
                        backend, config, batch, length, dim, device, not args.no_grad
                    )
                    record.update(static)
                    variants[f"{backend} {record['config']}"] = (record, calls)
                except Exception as err:  # noqa: BLE001 - OOM while preparing is a result too
                    record["status"] = "oom" if is_oom(err) else f"error: {type(err).__name__}: {err}"[:300]
                    log.add(record)
        time_variants(variants, device, warmup, reps, interleave=args.timing == "interleaved")
        for record, _ in variants.values():
            log.add(record)
        variants.clear()
        free_memory(device)
    log.finish()
    print_table(log.results, meta)
    print(f"results written to {args.out}")
    return 0


def print_table(results: list[dict], meta: dict) -> None:
    """The short summary table printed last: times and their ratio to the floor and to mamba-ssm."""
    print(f"\nselective scan, bf16, N={D_STATE}, {meta['device']}, median ms; x = time / exp floor")
    base = {
        (r["case"], "fwd"): r.get("fwd_ms") for r in results if r["backend"] == "cuda" and r["status"] == "ok"
    }
    base.update(
        {
            (r["case"], "fwdbwd"): r.get("fwdbwd_ms")
            for r in results
            if r["backend"] == "cuda" and r["status"] == "ok"
        }
    )
    header = f"{'case':<14}{'backend':<8}{'config':<26}{'fwd':>8}{'x':>6}{'vs cuda':>8}{'fwd+bwd':>9}{'x':>6}{'vs cuda':>8}"
    print(header)
    print("-" * len(header))
    for r in results:
        if r["status"] != "ok":
            print(f"{r['case']:<14}{r['backend']:<8}{r['config'][:25]:<26}{r['status'][:50]}")
            continue
        row = f"{r['case']:<14}{r['backend']:<8}{r['config'][:25]:<26}"
        for part, floor in (("fwd", r["floor_fwd_ms"]), ("fwdbwd", r["floor_fwdbwd_ms"])):
            value = r.get(f"{part}_ms")
            if value is None:
                row += f"{'-':>8}{'':>6}{'':>8}" if part == "fwd" else f"{'-':>9}{'':>6}{'':>8}"
                continue
            ref = base.get((r["case"], part))
            speedup = f"{ref / value:>7.2f}x" if ref else f"{'':>8}"
            width = 8 if part == "fwd" else 9
            row += f"{value:>{width}.3f}{value / floor:>6.1f}{speedup}"
        print(row)
    print(json.dumps({"copy_gbps": meta.get("copy_gbps")}))


if __name__ == "__main__":
    raise SystemExit(main())
