"""Training throughput, model FLOP/s, MFU and peak memory of DiM / U-ViT training steps on one GPU.

What one timed step is. The harness drives :class:`dimlab.lit.module.DiffusionModule` directly, WITHOUT the
Lightning Trainer, using the module's own pieces in the order the Trainer runs them under ``precision:
bf16-mixed``::

    optimizer.zero_grad(set_to_none=True)
    with torch.autocast("cuda", torch.bfloat16):      # fp32 master weights, bf16 compute
        loss = module.training_step(batch, i)         # noise, times, CFG label dropout, backbone, eps-MSE
    loss.backward()
    module.on_before_optimizer_step(optimizer)        # the grad-norm it logs is computed (logging itself is a no-op)
    clip_grad_norm_(params, clip)                     # 1.0 for the ImageNet recipes, none for CIFAR-10
    optimizer.step(); scheduler.step()                # AdamW from module.configure_optimizers()
    module.ema.update(module.backbone)                # what module.optimizer_step adds after the step

The batch is a GPU-resident random tensor reused every step, so the data loader is not measured. What the Trainer
adds on top (progress bar, logger connector, per-step ``.item()`` syncs) is not included: these numbers are the
ceiling the Trainer can reach.

FLOPs are counted analytically by :mod:`dimlab.flops` (dim-reference.md 3.2: linear/conv MACs + selective scan
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
* ``fused``        AdamW with ``fused=True`` (same hyper-parameters as ``configure_optimizers``),
* ``foreach_ema``  the EMA update as one ``torch._foreach_lerp_`` over all tensors instead of a per-tensor loop.

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
import datetime
import gc
import json
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import git_commit, median_seconds, synchronize  # noqa: E402 - shared helpers beside this script
from dimlab.flops import H100_BF16_DENSE_TFLOPS, H100_BF16_MEASURED_MATMUL_TFLOPS, backbone_cost
from dimlab.lit.module import DiffusionModule
from dimlab.models.presets import build_backbone
from dimlab.models.scan import resolve_backend


@dataclass(frozen=True)
class ModelCase:
    """A benchmarked backbone: its preset, the recipe bits that change the step, and default batches."""

    preset: str
    schedule: str  # vp_sde (CIFAR-10 pixels) or sd_discrete (ImageNet latents)
    class_conditional: bool
    clip: float | None  # gradient_clip_val of the experiment config
    batch: int  # default batch (--batch overrides)


MODELS: dict[str, ModelCase] = {
    "dim_s2": ModelCase("dim_s2", "vp_sde", False, None, 128),
    "dim_l2": ModelCase("dim_l2", "sd_discrete", True, 1.0, 64),
    "dim_h2": ModelCase("dim_h2", "sd_discrete", True, 1.0, 64),
    "dim_h2_512": ModelCase("dim_h2_512", "sd_discrete", True, 1.0, 16),
    "uvit_s2": ModelCase("uvit_s2", "vp_sde", False, None, 128),
    "uvit_h2": ModelCase("uvit_h2", "sd_discrete", True, 1.0, 64),
    "uvit_h2_512": ModelCase("uvit_h2_512", "sd_discrete", True, 1.0, 16),
}
#: --quick: the same presets shrunk to a few-kilobyte model on an 8x8 input (CPU smoke check).
QUICK_OVERRIDES = {
    "dim": dict(input_size=8, hidden_size=32, depth=3, d_state=4),
    "uvit": dict(input_size=8, hidden_size=32, depth=3, num_heads=2),
}
KNOBS = ("eager", "ckpt", "compile", "graphs", "fused", "foreach_ema")


# ------------------------------------------------------------------------------------------------ shared helpers
def matmul_tflops(device: torch.device, quick: bool) -> float:
    """bf16 dense matmul rate measured on ``device`` (TFLOP/s): the practical ceiling for MFU."""
    n = 256 if quick or device.type != "cuda" else 8192
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    seconds = median_seconds(lambda: a @ b, device, warmup=2 if quick else 5, reps=3 if quick else 20)
    return 2 * n**3 / seconds / 1e12


def is_oom(err: BaseException) -> bool:
    """True for CUDA allocation failures, whichever layer raised them (caching allocator, cuBLAS, kernels)."""
    if isinstance(err, torch.OutOfMemoryError):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and ("out of memory" in text or "ALLOC_FAILED" in text)


def free_memory(device: torch.device) -> None:
    """Drop unreachable tensors and return cached blocks, so the next trial starts from a clean pool."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def device_name(device: torch.device) -> str:
    """Human-readable device name for the JSON metadata."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"


def run_metadata(device: torch.device, argv: list[str] | None, **extra) -> dict:
    """Card, software versions, commit, date and command line: what RESULTS.md needs for every figure."""
    meta = {
        "device": device_name(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "commit": git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
    }
    try:
        from dimlab.models.scan import kernels_available

        meta["mamba_kernels"] = kernels_available()
    except ImportError:  # pragma: no cover - the scan module is part of dimlab
        meta["mamba_kernels"] = False
    meta.update(extra)
    return meta


class ResultLog:
    """Results of one benchmark run, rewritten to the JSON file after every record.

    A run cut short (a stage timeout in ``run_gpu_suite.sh``, a crash) still leaves every finished record on disk,
    with ``"complete": false``.
    """

    def __init__(self, path: Path, meta: dict, tag: str) -> None:
        self.path, self.meta, self.tag = path, meta, tag
        self.results: list[dict] = []
        self.extra: dict = {}
        path.parent.mkdir(parents=True, exist_ok=True)

    def add(self, record: dict) -> None:
        """Keep ``record``, print it as one JSON line, and rewrite the file."""
        self.results.append(record)
        print(f"{self.tag}: {json.dumps(record)}", flush=True)
        self._write(complete=False)

    def finish(self, **extra) -> None:
        """Write the final file (``"complete": true``) with any ``extra`` top-level entries."""
        self.extra.update(extra)
        self._write(complete=True)

    def _write(self, complete: bool) -> None:
        payload = {"meta": {**self.meta, "complete": complete}, "results": self.results, **self.extra}
        self.path.write_text(json.dumps(payload, indent=2))


def find_max_batch(fits: Callable[[int], bool], start: int, limit: int, granularity: int = 8) -> int:
    """Largest batch ``b <= limit`` with ``fits(b)``, assuming fitting is monotone in ``b``; 0 if ``fits(1)`` fails.

    Doubles from ``start`` until a failure (or ``limit``), then bisects the gap down to ``granularity`` (or 1 below
    it). Each probe is one call of ``fits``, which for training runs one full step and catches OOM.
    """
    if start < 1 or limit < 1 or granularity < 1:
        raise ValueError(f"start, limit and granularity must be >= 1, got {start}, {limit}, {granularity}")
    good, bad = 0, None
    b = min(start, limit)
    while bad is None:  # doubling phase
        if fits(b):
            good = b
            if b >= limit:
                return good
            b = min(2 * b, limit)
        else:
            bad = b
    resolution = max(1, min(granularity, good // 8))  # ~12% steps near the bottom, `granularity` higher up
    while bad - good > resolution:
        mid = good + max(1, (bad - good) // 2 // resolution) * resolution
        if fits(mid):
            good = mid
        else:
            bad = mid
    return good


# --------------------------------------------------------------------------------------------------- harness
class ForeachEMA:
    """The EMA update of :class:`dimlab.lit.ema.EMA` as one fused ``_foreach_lerp_`` over every floating tensor.

    Same result as ``EMA.update`` (``ema = decay * ema + (1 - decay) * source``); benchmarked as the alternative
    to the per-tensor loop, whose cost is ~2 kernel launches per tensor plus two ``state_dict()`` walks per step.
    """

    def __init__(self, ema, source: torch.nn.Module) -> None:
        ema_state, src_state = ema.module.state_dict(), source.state_dict()
        floating = [n for n, v in ema_state.items() if v.dtype.is_floating_point]
        self.decay = ema.decay
        self.targets = [ema_state[n] for n in floating]
        self.sources = [src_state[n].detach() for n in floating]
        self.copies = [(ema_state[n], src_state[n]) for n in ema_state if n not in set(floating)]

    @torch.no_grad()
    def update(self) -> None:
        """Advance the average by one step."""
        torch._foreach_lerp_(self.targets, self.sources, 1.0 - self.decay)
        for target, value in self.copies:
            target.copy_(value)


class TrainHarness:
    """Runs real DiffusionModule training steps for one model and one set of knobs (see the module docstring)."""

    def __init__(
        self,
        module: DiffusionModule,
        case: ModelCase,
        device: torch.device,
        knobs: set[str],
        compile_mode: str = "default",
    ) -> None:
        self.module = module
        self.case = case
        self.device = device
        self.knobs = knobs
        if {"compile", "graphs"} <= knobs:
            raise ValueError(
                "'compile' with 'graphs': use --compile-mode reduce-overhead (compile's own CUDA graphs)"
            )
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled="graphs" not in knobs)
        module.backbone.gradient_checkpointing = "ckpt" in knobs
        config = module.configure_optimizers()
        self.optimizer, self.scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
        if "fused" in knobs:
            self.optimizer = _fused_copy(self.optimizer)
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.scheduler.lr_lambdas[0])
        self.params = [p for p in module.backbone.parameters() if p.requires_grad]
        self.foreach_ema = ForeachEMA(module.ema, module.backbone) if "foreach_ema" in knobs else None
        module._forward = module.backbone
        if "compile" in knobs:
            module._forward = torch.compile(module.backbone, mode=compile_mode)
        self._graphed_batch: int | None = None
        self.step_index = 0

    def batch(self, size: int) -> dict[str, torch.Tensor]:
        """A GPU-resident random batch shaped like the recipe's data (pixels or latents, plus labels)."""
        shape = (size, *self.module.latent_shape)
        g = torch.Generator(device="cpu").manual_seed(size)
        x = torch.randn(shape, generator=g).to(self.device)
        y = torch.randint(0, max(self.module.num_classes, 1), (size,), generator=g).to(self.device)
        return {"x": x, "y": y}

    def _maybe_graph(self, batch: dict[str, torch.Tensor]) -> None:
        """Capture the backbone's forward + backward for this batch size (once per size).

        ``make_graphed_callables`` replaces the module's ``forward`` in place; :meth:`close` puts it back.
        """
        if "graphs" not in self.knobs or self._graphed_batch == batch["x"].shape[0]:
            return
        if self.device.type != "cuda":
            raise RuntimeError("the 'graphs' knob needs a CUDA device")
        if "ckpt" in self.knobs:
            raise RuntimeError(
                "'graphs' with 'ckpt' is not supported (checkpointed recompute inside a graph)"
            )
        self.close()
        size = batch["x"].shape[0]
        schedule = self.module.schedule
        x = torch.randn(size, *self.module.latent_shape, device=self.device)
        t = schedule.network_time(schedule.sample_training_time(size, self.device))
        y = batch["y"].clone()
        with self.autocast:
            self.module._forward = torch.cuda.make_graphed_callables(self.module.backbone, (x, t, y))
        self._graphed_batch = size

    def close(self) -> None:
        """Undo what the knobs changed on the module (graphed forward, compiled forward, checkpointing)."""
        self.module.backbone.__dict__.pop("forward", None)
        self.module._forward = self.module.backbone
        self.module.backbone.gradient_checkpointing = False
        self._graphed_batch = None

    def step(self, batch: dict[str, torch.Tensor], events: list | None = None) -> torch.Tensor:
        """One full optimisation step; with ``events`` (5 CUDA events) it records the phase boundaries."""
        self._maybe_graph(batch)
        module, opt = self.module, self.optimizer
        _record(events, 0)
        opt.zero_grad(set_to_none=True)
        with self.autocast:
            loss = module.training_step(batch, self.step_index)
        _record(events, 1)
        loss.backward()
        _record(events, 2)
        module.on_before_optimizer_step(opt)
        if self.case.clip is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.case.clip)
        opt.step()
        self.scheduler.step()
        _record(events, 3)
        if self.foreach_ema is not None:
            self.foreach_ema.update()
        else:
            module.ema.update(module.backbone)
        _record(events, 4)
        self.step_index += 1
        return loss.detach()

    def fits(self, size: int) -> bool:
        """Whether one full training step at batch ``size`` runs without running out of memory."""
        batch = self.batch(size)
        failed = False
        try:
            self.step(batch)
            synchronize(self.device)
        except Exception as err:  # noqa: BLE001 - OOM can surface from several layers; others are re-raised
            if not is_oom(err):
                raise
            failed = True
        if failed:  # outside the except block, so the traceback no longer pins the activations
            self.optimizer.zero_grad(set_to_none=True)
            if "graphs" in self.knobs:
                self.close()
        del batch
        free_memory(self.device)
        print(f"bench_train:   batch {size}: {'OOM' if failed else 'fits'}", flush=True)
        return not failed

    def measure(self, size: int, warmup: int, steps: int) -> dict:
        """Throughput and phase timings over ``steps`` timed steps at batch ``size`` (after ``warmup`` steps)."""
        batch = self.batch(size)
        for _ in range(warmup):
            self.step(batch)
        synchronize(self.device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        cuda = self.device.type == "cuda"
        all_events, cpu_times, losses = [], [], []
        t0 = time.perf_counter()
        for _ in range(steps):
            events = [torch.cuda.Event(enable_timing=True) for _ in range(5)] if cuda else None
            c0 = time.perf_counter()
            losses.append(self.step(batch, events))
            cpu_times.append(time.perf_counter() - c0)
            all_events.append(events)
        synchronize(self.device)
        wall = time.perf_counter() - t0
        record = {
            "step_ms": wall / steps * 1e3,
            "img_per_s": size * steps / wall,
            "cpu_issue_ms": statistics.median(cpu_times) * 1e3,
            "loss_first": float(losses[0]),
            "loss_last": float(losses[-1]),
        }
        if cuda:
            names = ("forward", "backward", "optimizer", "ema")
            for k, name in enumerate(names):
                ms = [ev[k].elapsed_time(ev[k + 1]) for ev in all_events]
                record[f"{name}_ms"] = statistics.median(ms)
            record["peak_mem_gib"] = torch.cuda.max_memory_allocated(self.device) / 2**30
            record["peak_reserved_gib"] = torch.cuda.max_memory_reserved(self.device) / 2**30
        return record


def _record(events: list | None, index: int) -> None:
    if events is not None:
        events[index].record()


def _fused_copy(optimizer: torch.optim.AdamW) -> torch.optim.AdamW:
    """AdamW over the same parameter groups and hyper-parameters, with the fused (single-kernel) implementation."""
    groups = [{k: v for k, v in g.items() if k not in ("foreach", "fused")} for g in optimizer.param_groups]
    return torch.optim.AdamW(groups, fused=True)


def build_module(name: str, device: torch.device, quick: bool, scan_backend: str) -> DiffusionModule:
    """The DiffusionModule of model ``name`` (random init) on ``device``, EMA included."""
    case = MODELS[name]
    family = "dim" if case.preset.startswith("dim") else "uvit"
    overrides = dict(QUICK_OVERRIDES[family]) if quick else {}
    if family == "dim":
        overrides["scan_backend"] = scan_backend
    with torch.device(device):
        backbone = build_backbone(case.preset, **overrides)
        module = DiffusionModule(
            backbone,
            schedule=case.schedule,
            class_conditional=case.class_conditional,
            warmup_steps=5000,
        )
    return module.to(device)  # also sets LightningModule.device


def parse_variants(text: str) -> list[set[str]]:
    """``eager,compile+fused`` -> [set(), {"compile", "fused"}]; unknown knobs are an error."""
    variants = []
    for spec in text.split(","):
        knobs = {k.strip() for k in spec.split("+") if k.strip()}
        unknown = knobs - set(KNOBS)
        if unknown or not knobs:
            raise SystemExit(f"bench_train: bad --variants entry {spec!r}; knobs are {', '.join(KNOBS)}")
        variants.append(knobs - {"eager"})
    return variants


def variant_name(knobs: set[str]) -> str:
    """Canonical name of a knob set (``eager`` for none)."""
    return "+".join(k for k in KNOBS if k in knobs) or "eager"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="where to write the JSON results")
    parser.add_argument("--models", default="dim_s2", help=f"comma-separated, from {', '.join(MODELS)}")
    parser.add_argument("--batch", default=None, help="comma-separated batch sizes (default: per model)")
    parser.add_argument("--find-max-batch", action="store_true", help="bisect the largest fitting batch")
    parser.add_argument("--max-batch-limit", type=int, default=2048, help="upper end of the batch search")
    parser.add_argument("--variants", default=None, help="e.g. eager,compile+fused (see the docstring)")
    parser.add_argument("--grad-ckpt", action="store_true", help="add the 'ckpt' knob to the single variant")
    parser.add_argument("--compile", action="store_true", help="add the 'compile' knob to the single variant")
    parser.add_argument(
        "--cuda-graphs", action="store_true", help="add the 'graphs' knob to the single variant"
    )
    parser.add_argument(
        "--fused-optim", action="store_true", help="add the 'fused' knob to the single variant"
    )
    parser.add_argument("--foreach-ema", action="store_true", help="add the 'foreach_ema' knob")
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


def device_and_models(args: argparse.Namespace, script: str, known=MODELS) -> tuple[torch.device, list[str]]:
    """The ``--device`` (exits if CUDA is asked for but absent) and the ``--models`` list (exits on names not in
    ``known``)."""
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit(f"{script}: --device cuda but no CUDA device is visible; use --device cpu --quick")
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in known]
    if unknown:
        sys.exit(f"{script}: unknown --models {unknown}; expected some of {list(known)}")
    return device, models


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
            "fused": args.fused_optim,
            "foreach_ema": args.foreach_ema,
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
            print(
                f"{r['model']:<12}{r.get('scan_backend', '-'):<7}{r['variant']:<22}{r.get('batch', ''):>6}  {r['status'][:60]}"
            )
            continue
        mem = f"{r['peak_mem_gib']:>9.1f}" if "peak_mem_gib" in r else f"{'-':>9}"
        print(
            f"{r['model']:<12}{r.get('scan_backend', '-'):<7}{r['variant']:<22}{r['batch']:>6}{r['img_per_s']:>9.1f}{r['step_ms']:>9.1f}"
            f"{r['cpu_issue_ms']:>8.1f}{r['model_tflops_per_s']:>9.1f}{100 * r['mfu_datasheet']:>6.1f}%"
            f"{100 * r['mfu_vs_ceiling']:>6.1f}%{mem}"
        )


if __name__ == "__main__":
    raise SystemExit(main())
