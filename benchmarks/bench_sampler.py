"""End-to-end sampling speed of :class:`dimlab.sampling.sampler.Sampler`: fp32 vs bf16 autocast vs bf16 + CUDA graphs.

``bench_sampling.py`` times one network evaluation in isolation; this script times what ``dimlab sample`` and
``dimlab fid`` actually run: ``Sampler.sample`` with DPM-Solver++ and CFG (random weights, the head perturbed so
the samples are not constant), per ``--precision`` / ``--cuda-graphs`` setting. Each case runs once untimed
(warm-up; with graphs, the capture), then ``--reps`` timed calls; it reports wall ms per solver step (= per
network evaluation, NFE) and per image, and the peak memory. The VAE decode is not included (latents only).

Usage:
    python benchmarks/bench_sampler.py --models dim_h2,uvit_h2 --batches 1,25 --out sampler.json
    python benchmarks/bench_sampler.py --quick --device cpu --out /tmp/sampler.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import (  # noqa: E402 - shared helpers beside this script
    QUICK_OVERRIDES,
    ResultLog,
    device_and_models,
    device_name,
    free_memory,
    run_metadata,
    synchronize,
)
from dimlab.models.presets import build_backbone
from dimlab.sampling.sampler import Sampler
from dimlab.sampling.spec import DiffusionSpec

#: name -> (preset, latent (C, H, W) at 256 px)
MODELS = {
    "dim_h2": ("dim_h2", (4, 32, 32)),
    "uvit_h2": ("uvit_h2", (4, 32, 32)),
    "dim_s2": ("dim_s2", (3, 32, 32)),
}
#: (label, precision, cuda_graphs)
SETTINGS = (("fp32", "fp32", False), ("bf16", "bf16", False), ("bf16+graphs", "bf16", True))


def build_sampler(name: str, device: torch.device, quick: bool) -> Sampler:
    """A Sampler over a randomly initialised backbone (head perturbed: the released init zeroes it)."""
    preset, shape = MODELS[name]
    overrides = dict(QUICK_OVERRIDES["dim" if preset.startswith("dim") else "uvit"]) if quick else {}
    if quick:
        shape = (shape[0], 8, 8)
    torch.manual_seed(0)
    with torch.device(device):
        backbone = build_backbone(preset, **overrides)
    with torch.no_grad():
        for p in backbone.parameters():
            p.add_(0.02 * torch.randn_like(p))
    num_classes = int(getattr(backbone, "num_classes", 0))
    spec = DiffusionSpec(
        "sd_discrete", latent_shape=shape, num_classes=num_classes, class_conditional=num_classes > 0
    )
    return Sampler(backbone.eval(), spec)


def time_setting(sampler: Sampler, batch: int, steps: int, reps: int, precision: str, graphs: bool) -> dict:
    """Wall time of ``reps`` Sampler.sample calls after one untimed call, and the peak memory."""
    device = sampler.device
    labels = [i % max(sampler.num_classes, 1) for i in range(batch)]

    def run(offset: int) -> torch.Tensor:
        seeds = list(range(offset, offset + batch))
        return sampler.sample(
            labels, seeds, cfg_scale=0.4, steps=steps, precision=precision, cuda_graphs=graphs
        )

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    run(0)
    synchronize(device)
    t0 = time.perf_counter()
    for rep in range(reps):
        out = run(batch * (rep + 1))
    synchronize(device)
    seconds = (time.perf_counter() - t0) / reps
    record = {
        "ms_per_call": seconds * 1e3,
        "ms_per_nfe": seconds * 1e3 / steps,
        "ms_per_image": seconds * 1e3 / batch,
        "finite": bool(torch.isfinite(out).all()),
    }
    if device.type == "cuda":
        record["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return record


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="where to write the JSON results")
    parser.add_argument(
        "--models", default="dim_h2,uvit_h2", help=f"comma-separated, from {', '.join(MODELS)}"
    )
    parser.add_argument("--batches", default="1,25", help="images per Sampler.sample call")
    parser.add_argument("--steps", type=int, default=10, help="DPM-Solver++ steps per call (NFE)")
    parser.add_argument("--reps", type=int, default=2, help="timed calls per case")
    parser.add_argument(
        "--settings", default=",".join(s[0] for s in SETTINGS), help="subset of fp32,bf16,bf16+graphs"
    )
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--quick", action="store_true", help="tiny models, CPU settings only (smoke check)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    device, models = device_and_models(args, "bench_sampler", known=MODELS)
    wanted = set(args.settings.split(","))
    if unknown := wanted - {s[0] for s in SETTINGS}:
        sys.exit(f"bench_sampler: unknown --settings {sorted(unknown)}")
    settings = [s for s in SETTINGS if s[0] in wanted and (device.type == "cuda" or not s[2])]
    batches = [int(b) for b in args.batches.split(",")]
    if args.quick:
        batches = [min(b, 2) for b in batches]
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    meta = run_metadata(device, argv, steps=args.steps, reps=args.reps, solver="dpm++", cfg_scale=0.4)
    log = ResultLog(args.out, meta, "bench_sampler")
    for name in models:
        sampler = build_sampler(name, device, args.quick)
        for batch in batches:
            for label, precision, graphs in settings:
                record = {"model": name, "batch": batch, "setting": label}
                try:
                    record.update(time_setting(sampler, batch, args.steps, args.reps, precision, graphs))
                    record["status"] = "ok"
                except Exception as err:  # noqa: BLE001 - an OOM or capture failure is a result, the run goes on
                    record["status"] = f"error: {type(err).__name__}: {err}"
                log.add(record)
            sampler._graphed.clear()
            free_memory(device)
        del sampler
        free_memory(device)
    log.finish()
    print(f"\nSampler.sample, DPM-Solver++ {args.steps} steps, CFG 0.4, {device_name(device)}")
    print(f"{'model':<9}{'batch':>6}  {'setting':<13}{'ms/NFE':>9}{'ms/image':>10}{'GiB':>7}")
    for r in log.results:
        if r["status"] != "ok":
            print(f"{r['model']:<9}{r['batch']:>6}  {r['setting']:<13}{r['status'][:60]}")
            continue
        mem = f"{r['peak_mem_gib']:>7.1f}" if "peak_mem_gib" in r else f"{'-':>7}"
        print(
            f"{r['model']:<9}{r['batch']:>6}  {r['setting']:<13}{r['ms_per_nfe']:>9.2f}{r['ms_per_image']:>10.1f}{mem}"
        )
    print(f"results written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
