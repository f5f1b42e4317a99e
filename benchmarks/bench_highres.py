"""Time and memory of training-free upsampling with DiM-H/2: 1536 px (latent 192, ~9,800 tokens) and 1024 px.

The 512 model (``dim_h2_512``, random weights: speed and memory do not depend on the values) is built at its own
latent size 64 and run at 128 / 192 through the run-time position-table resize, exactly as ``dimlab sample
--resolution 1536 --upsample-guidance --cfg-scale 3`` runs a real fine-tuned checkpoint: the shared
:meth:`dimlab.sampling.sampler.Sampler.sample` path, CFG as one forward of batch 2 per image, upsample guidance with
factor m = 2 or 3 (its low-resolution branch runs at latent 64 for t >= 0.7), plain DPM-Solver, bf16 autocast,
the mamba-ssm CUDA scan. Each model call is timed (CUDA-synchronised) and classified by whether the low-resolution
branch ran; a solver step is one call here (DPM-Solver 'fast' makes ``steps`` calls). The VAE decode is excluded.

Usage:
    python benchmarks/bench_highres.py --out runs/bench_highres.json            # H100: 1536 and 1024 px
    python benchmarks/bench_highres.py --quick --device cpu --out /tmp/h.json    # CPU smoke run, tiny model
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import git_commit, synchronize  # noqa: E402 - shared helpers beside this script
from dimlab.data.vae import SD_VAE_FACTOR
from dimlab.models.dim import DiM
from dimlab.models.presets import build_backbone
from dimlab.models.scan import kernels_available
from dimlab.sampling.sampler import Sampler
from dimlab.sampling.spec import DiffusionSpec

TRAINED_LATENT = 64  # dim_h2_512: 512 px images, SD-VAE latents 4 x 64 x 64
QUICK_TRAINED_LATENT = 8


class CallTimer:
    """Wraps the guided model function and records (t_net, seconds) of every call, synchronising the device."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.calls: list[tuple[float, float]] = []

    def wrap(self, fn):
        def timed(x, t_net):
            synchronize(self.device)
            t0 = time.perf_counter()
            out = fn(x, t_net)
            synchronize(self.device)
            self.calls.append((float(torch.as_tensor(t_net).reshape(-1)[0]), time.perf_counter() - t0))
            return out

        return timed


class BackboneShapes:
    """Counts the backbone forwards per input shape (forward pre-hook): shows the low-resolution branch ran."""

    def __init__(self, backbone: torch.nn.Module) -> None:
        self.counts: dict[str, int] = {}
        self.handle = backbone.register_forward_pre_hook(self._hook)

    def _hook(self, module, args) -> None:
        key = "x".join(map(str, args[0].shape))
        self.counts[key] = self.counts.get(key, 0) + 1


def build_model(quick: bool, device: torch.device, scan_backend: str) -> torch.nn.Module:
    """DiM-H/2 512 (random weights) or, with ``quick``, a tiny DiM with the same structure, on ``device``."""
    if quick:
        model = DiM(
            input_size=QUICK_TRAINED_LATENT,
            patch_size=2,
            in_channels=4,
            hidden_size=32,
            depth=5,
            num_classes=1000,
            d_state=4,
            pad_fill="rho_pad",
            scan_backend=scan_backend,
        )
    else:
        with torch.device(device):
            model = build_backbone("dim_h2_512", scan_backend=scan_backend)
    return model.to(device).eval()


def sequence_length(model: DiM, latent: int) -> int:
    """Tokens in the residual stream at a square latent (image tokens, pads, separators, cond tokens)."""
    grid = model.grid_for(latent, latent)
    return int(model.index_plan(grid).assemble.numel())


def bench_resolution(
    sampler: Sampler, pixels: int, steps: int, warmup_steps: int, cfg_scale: float, eta: float, device
) -> dict:
    """One upsampled image (batch 1, CFG batch 2) at ``pixels``: per-call times, per-step time, peak memory."""
    latent = pixels // SD_VAE_FACTOR
    shape = (sampler.latent_shape[0], latent, latent)
    guidance = sampler.upsample_guidance(shape, eta=eta)
    m = latent // sampler.latent_shape[1]
    kwargs = dict(labels=[207], cfg_scale=cfg_scale, sampler="dpm", latent_shape=shape)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16)
    if warmup_steps:
        with autocast:
            sampler.sample(seeds=[1], steps=warmup_steps, model_fn_wrapper=guidance, **kwargs)
    timer = CallTimer(device)
    shapes = BackboneShapes(sampler.backbone)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    synchronize(device)
    t0 = time.perf_counter()
    try:
        with autocast:
            image = sampler.sample(
                seeds=[0], steps=steps, model_fn_wrapper=lambda fn: timer.wrap(guidance(fn)), **kwargs
            )
        synchronize(device)
    finally:
        shapes.handle.remove()
    total = time.perf_counter() - t0
    threshold = (1.0 - eta) * 1000.0
    active = [s for t, s in timer.calls if t >= threshold]
    inactive = [s for t, s in timer.calls if t < threshold]
    record = {
        "pixels": pixels,
        "latent": latent,
        "m": m,
        "tokens": sequence_length(sampler.backbone, latent),
        "low_res_tokens": sequence_length(sampler.backbone, latent // m),
        "steps": steps,
        "calls": len(timer.calls),
        "calls_with_low_res_branch": len(active),
        "backbone_forwards": shapes.counts,
        "s_per_step_mean": total / steps,
        "s_per_call_low_res_active": statistics.median(active) if active else None,
        "s_per_call_high_res_only": statistics.median(inactive) if inactive else None,
        "total_s": total,
        "finite": bool(torch.isfinite(image).all()),
    }
    if device.type == "cuda":
        record["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return record


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="where to write the JSON results")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cuda or cpu")
    parser.add_argument(
        "--quick", action="store_true", help="tiny DiM at latent 8 -> 16 / 24 (CPU smoke run)"
    )
    parser.add_argument("--pixels", default=None, help="comma-separated output sizes (default 1536,1024)")
    parser.add_argument("--steps", type=int, default=6, help="DPM-Solver steps timed per resolution")
    parser.add_argument("--warmup-steps", type=int, default=3, help="untimed steps first (kernels, caches)")
    parser.add_argument("--cfg-scale", type=float, default=3.0)
    parser.add_argument("--eta", type=float, default=0.3, help="upsample guidance is active for t >= 1 - eta")
    parser.add_argument("--scan-backend", default=None, help="default: cuda on a GPU, torch on CPU")
    args = parser.parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.scan_backend is None:
        args.scan_backend = "cuda" if args.device.startswith("cuda") else "torch"
    if args.scan_backend == "cuda" and not kernels_available():
        parser.error("--scan-backend cuda needs the mamba-ssm / causal-conv1d kernels (`make kernels`)")
    trained = QUICK_TRAINED_LATENT if args.quick else TRAINED_LATENT
    default = f"{3 * trained * SD_VAE_FACTOR},{2 * trained * SD_VAE_FACTOR}"
    args.pixels = [int(p) for p in (args.pixels or default).split(",")]
    for p in args.pixels:
        latent = p // SD_VAE_FACTOR
        if p % SD_VAE_FACTOR or latent % trained or latent // trained < 2:
            parser.error(f"--pixels {p}: expected an integer multiple m >= 2 of {trained * SD_VAE_FACTOR}")
    return args


def print_table(records: list[dict]) -> None:
    """The short table, printed last."""
    print("\nUpsampled DiM sampling, batch 1 with CFG (forward batch 2), bf16 autocast, plain DPM-Solver")
    header = (
        f"{'pixels':>7} {'m':>2} {'tokens':>7} {'s/step':>8} {'s/call+low':>11} {'s/call':>8} {'peak GiB':>9}"
    )
    print(header)
    print("-" * len(header))
    for r in records:

        def fmt(v, spec=".3f"):
            return "-" if v is None else format(v, spec)

        print(
            f"{r['pixels']:>7} {r['m']:>2} {r['tokens']:>7} {fmt(r['s_per_step_mean']):>8} "
            f"{fmt(r['s_per_call_low_res_active']):>11} {fmt(r['s_per_call_high_res_only']):>8} "
            f"{fmt(r.get('peak_mem_gib'), '.2f'):>9}"
        )


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_model(args.quick, device, args.scan_backend)
    trained = QUICK_TRAINED_LATENT if args.quick else TRAINED_LATENT
    sampler = Sampler(
        model, DiffusionSpec("sd_discrete", latent_shape=(4, trained, trained), num_classes=1000)
    )
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "model": "tiny DiM (quick)" if args.quick else "dim_h2_512 (random weights)",
        "params": sum(p.numel() for p in model.parameters()),
        "scan_backend": args.scan_backend,
        "cfg_scale": args.cfg_scale,
        "eta": args.eta,
        "sampler": "dpm",
        "complete": False,
    }
    records = []
    for pixels in args.pixels:
        records.append(
            bench_resolution(sampler, pixels, args.steps, args.warmup_steps, args.cfg_scale, args.eta, device)
        )
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"meta": meta, "results": records}, indent=2))
    meta["complete"] = True
    args.out.write_text(json.dumps({"meta": meta, "results": records}, indent=2))
    print_table(records)
    print(f"results written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
