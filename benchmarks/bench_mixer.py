"""Time the Mamba mixer's scan backends (mamba-ssm `cuda` vs pure-PyTorch `torch`) on DiM's shapes.

For DiM-S/L/H widths (d_model 512/1024/1536; d_state 16, d_conv 3, expand 2) at 256px (L=366, batch 8
and 64) and 512px (L=1230, batch 8), under bf16 autocast with fp32 weights (the training setting):

* fwd      forward under torch.no_grad() (sampling),
* fwd+bwd  forward with autograd, then backward of a fixed output gradient (training).

Each time is the median of --reps runs timed with CUDA events (perf_counter on CPU) after --warmup runs.

Memory-traffic floor. Per token, the mixer's activations are (elements): x_in D, xz 2E, x_conv E,
x_dbl R+2N, dt E, y E, out D (E = expand*D, R = dt_rank, N = d_state). If every intermediate were
written once and read once, the input read once and the output written once, the forward pass moves

    bytes_fwd = s * B * L * (2*D + 2*(2E + E + (R + 2N) + E + E)) + s_w * n_params

with s = 2 (bf16 activations) and s_w = 4 (fp32 weights, read once). The backward pass reads each
saved activation once and writes and reads each activation gradient once, about twice the forward
traffic, so bytes_fwd+bwd = 3 * bytes_fwd. The floor time is bytes / B_copy, where B_copy is the
device-to-device copy bandwidth measured at start-up (bytes read + written per second). The ratio
time / floor says how far each backend is from a perfectly fused, memory-bound mixer.

Usage:
    python benchmarks/bench_mixer.py --out runs/bench_mixer.json              # GPU, all cases
    python benchmarks/bench_mixer.py --device cpu --quick --out /tmp/b.json   # smoke check, tiny shapes
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import copy_bandwidth, git_commit, median_seconds  # noqa: E402 - shared helpers beside this script
from dimlab.models.mamba import Mamba, set_scan_backend
from dimlab.models.scan import kernels_available

WIDTHS = {"S": 512, "L": 1024, "H": 1536}
CASES = [(256, 366, 8), (256, 366, 64), (512, 1230, 8)]  # (resolution, tokens, batch)
QUICK_WIDTHS = {"tiny": 32}
QUICK_CASES = [(32, 37, 2)]


def traffic_bytes(mixer: Mamba, batch: int, length: int, act_bytes: int = 2, weight_bytes: int = 4) -> int:
    """Forward-pass memory-traffic floor in bytes (formula in the module docstring)."""
    d, e, r, n = mixer.d_model, mixer.d_inner, mixer.dt_rank, mixer.d_state
    per_token = 2 * d + 2 * (2 * e + e + (r + 2 * n) + e + e)
    n_params = sum(p.numel() for p in mixer.parameters())
    return act_bytes * batch * length * per_token + weight_bytes * n_params


def bench_one(mixer, backend, batch, length, device, warmup, reps) -> dict:
    """fwd and fwd+bwd medians (ms) and peak memory for one backend and shape."""
    set_scan_backend(mixer, backend)
    x = torch.randn(batch, length, mixer.d_model, device=device, requires_grad=True)
    grad_out = torch.randn(batch, length, mixer.d_model, device=device, dtype=torch.bfloat16)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16)

    def forward():
        with torch.no_grad(), autocast:
            mixer(x)

    def forward_backward():
        with autocast:
            y = mixer(x)
        y.backward(grad_out)

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    fwd = median_seconds(forward, device, warmup, reps)
    fwd_bwd = median_seconds(forward_backward, device, warmup, reps)
    record = {"fwd_ms": fwd * 1e3, "fwdbwd_ms": fwd_bwd * 1e3}
    if device.type == "cuda":
        record["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    mixer.zero_grad(set_to_none=True)
    return record


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="where to write the JSON results")
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--quick", action="store_true", help="tiny shapes and few repetitions (smoke check)")
    parser.add_argument("--backends", default="triton,cuda", help="comma-separated: triton, cuda, torch")
    parser.add_argument("--models", default="S,L,H", help="comma-separated widths to run (S, L, H)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed runs first (default 3; quick 1)")
    parser.add_argument("--reps", type=int, default=None, help="timed runs (default 10; quick 2)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("bench_mixer: --device cuda but no CUDA device is visible; use --device cpu --quick")
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    reps = args.reps if args.reps is not None else (2 if args.quick else 10)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if "cuda" in backends and (device.type != "cuda" or not kernels_available()):
        print(f"bench_mixer: skipping backend 'cuda' (device {device.type}, kernels {kernels_available()})")
        backends.remove("cuda")
    if (
        "triton" in backends
        and device.type != "cuda"
        and os.environ.get("TRITON_INTERPRET", "0") in ("", "0")
    ):
        print("bench_mixer: skipping backend 'triton' on the CPU (set TRITON_INTERPRET=1 to interpret it)")
        backends.remove("triton")
    if args.quick:
        widths, cases = QUICK_WIDTHS, QUICK_CASES
    else:
        unknown = [m for m in args.models.split(",") if m not in WIDTHS]
        if unknown:
            sys.exit(f"bench_mixer: unknown --models {unknown}; expected some of {list(WIDTHS)}")
        widths, cases = {m: WIDTHS[m] for m in args.models.split(",")}, CASES
    torch.backends.cuda.matmul.allow_tf32 = True

    bandwidth = copy_bandwidth(device, args.quick)
    print(f"bench_mixer: copy bandwidth {bandwidth / 1e9:.0f} GB/s on {device}")
    results = []
    for model, d_model in widths.items():
        torch.manual_seed(0)
        mixer = Mamba(d_model, d_state=16, d_conv=3, expand=2, device=device)
        for resolution, length, batch in cases:
            floor_fwd = traffic_bytes(mixer, batch, length) / bandwidth
            for backend in backends:
                record = {
                    "model": model,
                    "d_model": d_model,
                    "resolution": resolution,
                    "length": length,
                    "batch": batch,
                    "backend": backend,
                    "bytes_fwd": traffic_bytes(mixer, batch, length),
                    "floor_fwd_ms": floor_fwd * 1e3,
                    "floor_fwdbwd_ms": 3 * floor_fwd * 1e3,
                }
                try:
                    record.update(bench_one(mixer, backend, batch, length, device, warmup, reps))
                    record["status"] = "ok"
                except torch.OutOfMemoryError:
                    record["status"] = "oom"
                    mixer.zero_grad(set_to_none=True)
                    torch.cuda.empty_cache()
                results.append(record)
                print(f"bench_mixer: {json.dumps(record)}", flush=True)

    meta = {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "torch": torch.__version__,
        "commit": git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "copy_bandwidth_gbps": bandwidth / 1e9,
        "autocast": "bf16",
        "warmup": warmup,
        "reps": reps,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=2))

    print(f"\nMamba mixer, bf16 autocast, {meta['device']}, median of {reps} (ms); floor = traffic / copy BW")
    header = f"{'model':<6}{'L':>6}{'batch':>6}  {'backend':<8}{'fwd':>9}{'x floor':>8}{'fwd+bwd':>10}{'x floor':>8}"
    print(header)
    print("-" * len(header))
    for r in results:
        if r["status"] != "ok":
            print(f"{r['model']:<6}{r['length']:>6}{r['batch']:>6}  {r['backend']:<8}{r['status']:>9}")
            continue
        print(
            f"{r['model']:<6}{r['length']:>6}{r['batch']:>6}  {r['backend']:<8}"
            f"{r['fwd_ms']:>9.2f}{r['fwd_ms'] / r['floor_fwd_ms']:>8.1f}"
            f"{r['fwdbwd_ms']:>10.2f}{r['fwdbwd_ms'] / r['floor_fwdbwd_ms']:>8.1f}"
        )
    print(f"results written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
