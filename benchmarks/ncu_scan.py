"""The Triton scan and conv kernels at one bench_scan case, launched a few times: a target for Nsight Compute.

Run under ``ncu`` to read what the timings alone cannot say: the kernels' registers, achieved occupancy,
issue-slot use and why their warps stall (the suite's ``ncu`` stage)::

    ncu --clock-control none -k regex:'scan_|conv_' -c 6 --section WarpStateStats --section Occupancy \\
        python benchmarks/ncu_scan.py --case s2_train

Each iteration is one forward (keeping what the backward needs) and one backward of the scan, then one forward
and backward of the causal conv1d on a tensor of the same shape; ``--iters`` iterations after one untimed
warm-up (which compiles the kernels, outside ncu's kernel count when ``--launch-skip`` skips it).
Without ncu it prints the median ms of each part, so the same command checks that it runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import median_seconds  # noqa: E402 - beside this script
from bench_scan import CASES, D_STATE, make_inputs  # noqa: E402 - the same cases and inputs as bench_scan
from dimlab.kernels import causal_conv1d, selective_scan  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", default="s2_train", help=f"one of {', '.join(CASES)} (or 'tiny')")
    parser.add_argument("--iters", type=int, default=1, help="profiled iterations after the warm-up")
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (TRITON_INTERPRET=1)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    """Launch the kernels at the chosen case; print one line of median timings."""
    args = parse_args(argv)
    shapes = {**CASES, "tiny": (1, 9, 32)}
    if args.case not in shapes:
        raise SystemExit(f"ncu_scan: --case {args.case!r} is not one of {', '.join(shapes)}")
    device = torch.device(args.device)
    batch, length, dim = shapes[args.case]
    inputs = {
        k: v.requires_grad_() for k, v in make_inputs(batch, length, dim, D_STATE, device, True).items()
    }
    grad_out = torch.randn_like(inputs["u"])
    x = torch.randn(batch, length, dim, device=device, dtype=torch.bfloat16, requires_grad=True)
    weight = torch.randn(dim, 3, device=device, requires_grad=True)
    bias = torch.randn(dim, device=device, requires_grad=True)

    def scan_step():
        out = selective_scan(**inputs, delta_softplus=True)
        torch.autograd.grad(out, list(inputs.values()), grad_out)

    def conv_step():
        out = causal_conv1d(x, weight, bias)
        torch.autograd.grad(out, (x, weight, bias), grad_out)

    scan_ms = median_seconds(scan_step, device, 1, args.iters) * 1e3
    conv_ms = median_seconds(conv_step, device, 1, args.iters) * 1e3
    print(
        f"ncu_scan {args.case} {batch}x{length}x{dim}: scan fwd+bwd {scan_ms:.3f} ms, conv fwd+bwd {conv_ms:.3f} ms"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
