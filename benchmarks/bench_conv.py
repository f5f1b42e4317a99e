"""Time the causal depthwise conv1d (+ SiLU) alone: dimlab's Triton kernels vs causal-conv1d, against the bytes floor.

Shapes (batch x L x E, d_conv 3 as DiM, bias, SiLU, bf16 activations, fp32 weights) are the mixer's:

    s2_train      128 x   366 x 1024   DiM-S/2 training on CIFAR-10
    h2_train       64 x   366 x 3072   DiM-H/2 training at 256 px
    h2_512_train   16 x  1230 x 3072   DiM-H/2 fine-tuning at 512 px
    h2_1024_cfg     2 x  4494 x 3072   DiM-H/2 sampling at 1024 px, batch 1 with CFG

x is the first half of an in_proj output (batch, L, 2E), as in the mixer: a strided channel-last view that
neither implementation copies. causal-conv1d gets the same memory as its channel-last (batch, E, L) view.

The floor. The conv must read x and write its output once: 2 * 2 bytes per (token, channel) forward. The
backward reads x and the output gradient and writes dx (3 * 2 bytes), so fwd+bwd moves 5 * 2 bytes per
element (the weight gradient's partials are small). ``floor_*_ms`` is those bytes over the device-to-device
copy bandwidth measured at start-up (bytes read + written per second).

Usage:
    python benchmarks/bench_conv.py --out runs/bench_conv.json
    TRITON_INTERPRET=1 python benchmarks/bench_conv.py --device cpu --quick --out /tmp/c.json   # smoke check
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import (  # noqa: E402 - beside this script
    ResultLog,
    copy_bandwidth,
    free_memory,
    is_oom,
    kernel_bench_setup,
    median_seconds,
    run_metadata,
)
from dimlab.kernels import causal_conv1d  # noqa: E402

CASES = {
    "s2_train": (128, 366, 1024),
    "h2_train": (64, 366, 3072),
    "h2_512_train": (16, 1230, 3072),
    "h2_1024_cfg": (2, 4494, 3072),
}
QUICK_CASES = {"tiny": (2, 37, 40)}
D_CONV = 3


def conv_fn(backend: str):
    """(x channel-last view, weight (E, K), bias) -> output, for a backend."""
    if backend == "triton":
        return lambda x, w, b: causal_conv1d(x, w, b)
    if backend == "cuda":
        from causal_conv1d import causal_conv1d_fn

        return lambda x, w, b: causal_conv1d_fn(x.transpose(1, 2), w, b, activation="silu")
    raise ValueError(f"bench_conv: unknown backend {backend!r} (triton, cuda)")


def run_case(backend: str, batch: int, length: int, dim: int, device: torch.device, warmup: int, reps: int):
    """Median fwd and fwd+bwd ms of one backend at one shape."""
    xz = torch.randn(batch, length, 2 * dim, device=device, dtype=torch.bfloat16)
    x = xz[..., :dim].detach().requires_grad_()  # a leaf that keeps the view's strides
    w = torch.randn(dim, D_CONV, device=device, requires_grad=True)
    b = torch.randn(dim, device=device, requires_grad=True)
    fn = conv_fn(backend)
    grad_out = torch.randn(batch, length, dim, device=device, dtype=torch.bfloat16)
    if backend == "cuda":
        grad_out = grad_out.transpose(1, 2)  # causal-conv1d returns (batch, E, L)
    with torch.no_grad():
        fwd = median_seconds(lambda: fn(x, w, b), device, warmup, reps)

    def fwd_bwd():
        torch.autograd.grad(fn(x, w, b), (x, w, b), grad_out)

    return {"fwd_ms": fwd * 1e3, "fwdbwd_ms": median_seconds(fwd_bwd, device, warmup, reps) * 1e3}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="where to write the JSON results")
    parser.add_argument(
        "--device", default="cuda", help="cuda (default) or cpu (with --quick: the interpreter)"
    )
    parser.add_argument("--quick", action="store_true", help="a tiny shape, one repetition (smoke check)")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, from {', '.join(CASES)}")
    parser.add_argument("--backends", default="triton,cuda", help="comma-separated: triton, cuda")
    parser.add_argument("--warmup", type=int, default=None, help="untimed runs first (default 3; quick 1)")
    parser.add_argument("--reps", type=int, default=None, help="timed runs (default 20; quick 1)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    """Time every (case, backend); write the JSON log and print a table."""
    args = parse_args(argv)
    device, warmup, reps, cases = kernel_bench_setup(args, "bench_conv", CASES, QUICK_CASES, 20)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if "cuda" in backends and (device.type != "cuda" or importlib.util.find_spec("causal_conv1d") is None):
        print(f"bench_conv: skipping backend 'cuda' (device {device.type} or causal-conv1d not installed)")
        backends.remove("cuda")
    bandwidth = copy_bandwidth(device, args.quick)
    meta = run_metadata(device, argv, d_conv=D_CONV, warmup=warmup, reps=reps, copy_gbps=bandwidth / 1e9)
    log = ResultLog(args.out, meta, "bench_conv")
    for case, (batch, length, dim) in cases.items():
        elements = batch * length * dim
        for backend in backends:
            record = {
                "case": case,
                "shape": [batch, length, dim, D_CONV],
                "backend": backend,
                "floor_fwd_ms": 4 * elements / bandwidth * 1e3,
                "floor_fwdbwd_ms": 10 * elements / bandwidth * 1e3,
            }
            try:
                record.update(run_case(backend, batch, length, dim, device, warmup, reps))
                record["status"] = "ok"
            except Exception as err:  # noqa: BLE001 - OOM or a kernel failure is a result too
                record["status"] = "oom" if is_oom(err) else f"error: {type(err).__name__}: {err}"[:300]
            free_memory(device)
            log.add(record)
    log.finish()
    print(f"{'case':14} {'backend':8} {'fwd ms':>8} {'x floor':>8} {'fwd+bwd ms':>11} {'x floor':>8}")
    for r in log.results:
        if r["status"] == "ok":
            print(
                f"{r['case']:14} {r['backend']:8} {r['fwd_ms']:8.3f} {r['fwd_ms'] / r['floor_fwd_ms']:8.1f} "
                f"{r['fwdbwd_ms']:11.3f} {r['fwdbwd_ms'] / r['floor_fwdbwd_ms']:8.1f}"
            )
        else:
            print(f"{r['case']:14} {r['backend']:8} {r['status']}")
    print(f"results written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
