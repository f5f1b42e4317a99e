"""DDP / FSDP scaling efficiency of training through the real Lightning Trainer: images/s on 1, 2, 4, 8 GPUs.

What is measured. The product's path: :class:`dimlab.lit.module.DiffusionModule` (the recipe's optimizer, EMA,
loss, CFG label dropout) trained by ``lightning.Trainer(strategy="ddp", precision="bf16-mixed",
gradient_clip_val=<recipe>)`` with the per-step fault callbacks ``dimlab fit`` installs by default
(``PreemptionCheckpoint`` and ``NonFiniteGuard``: one small all-reduce and one host sync each per step;
``--callbacks none`` leaves them out). No logger, progress bar, checkpoints or validation. Each configuration runs
in a fresh worker process (``python bench_ddp.py --worker ...``); for ``devices=2`` Lightning's own subprocess
launcher starts rank 1 by re-running that command with ``LOCAL_RANK=1``, exactly as under ``dimlab fit
--trainer.devices=2``. The workers inherit ``PYTHONPATH`` (with dimlab's ``src`` folder put first) and get
``NCCL_NVLS_ENABLE=0``, ``TORCH_SYMM_MEM_DISABLE_MULTICAST=1`` and ``NVSHMEM_DISABLE_NVLS=1`` (NVLink multicast
off in NCCL, PyTorch and NVSHMEM; docs/scaling.md) unless they are already set.

Data. A map-style synthetic dataset of random latents (4x32x32 for the ImageNet-256 models) and labels, held in
memory; Lightning adds its DistributedSampler, so each rank reads its own slice. Collating and copying ~1 MB per
step is negligible beside a training step, so the loader is not what is measured.

Timing. Steps ``1..warmup`` are untimed. At the end of step ``warmup`` the ranks meet at a barrier, then each
rank synchronizes its GPU and starts a ``perf_counter``; at the end of step ``warmup + steps`` it synchronizes and
stops it. A configuration's time is the slowest rank's. images/s is global: ``batch x devices x steps / time``.
Peak memory (``torch.cuda.max_memory_allocated`` / ``max_memory_reserved``, over the whole run, warmup included) is
reported per rank; on CPU the peak RSS instead.

Configurations (``--configs``, run in this order): ``ddpN`` (strategy ddp on N devices), ``fsdp-fullN`` and
``fsdp-gradN`` (Lightning's FSDPStrategy as ``experiments/overlays/fsdp.yaml`` sets it up, one unit per DiM block,
with FULL_SHARD or SHARD_GRAD_OP), ``single`` (strategy auto, 1 device: what ``dimlab fit --trainer.devices=1``
runs, without the DDP wrapper). Configurations that need more devices than are visible are skipped. The scaling
efficiency of a configuration on N devices is ``img/s / (N x img/s(ddp1))`` (``efficiency`` is the 2-device one,
``efficiency_vs_single`` uses ``single`` instead); ``fsdp_over_ddp`` compares each FSDP configuration with DDP on
as many devices. ``--accumulate K`` accumulates K micro-batches per optimizer step (the 512 px fine-tune recipe
uses 2); a timed step is then an optimizer step and images/s counts every micro-batch.

Usage (the 2-GPU measurement; ~3 minutes on 2 H100s; dimlab importable through PYTHONPATH or an install):
    PYTHONPATH=$PWD/src:$PWD/.kernels/site python3 benchmarks/bench_ddp.py --model dim_l2 --batch 64 \\
        --out bench_out/ddp_scaling.json
    python benchmarks/bench_ddp.py --quick --device cpu --out /tmp/ddp.json   # 2 gloo CPU ranks, tiny model
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
import yaml
from torch.utils.data import DataLoader, Dataset

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
import dimlab  # noqa: E402
from bench_common import QUICK_OVERRIDES, ResultLog, run_metadata  # noqa: E402 - shared helpers beside this script
from dimlab.flops import backbone_cost  # noqa: E402
from dimlab.lit.faults import NonFiniteGuard, PreemptionCheckpoint  # noqa: E402
from dimlab.lit.module import DiffusionModule  # noqa: E402
from dimlab.models.presets import build_backbone  # noqa: E402
from dimlab.models.scan import resolve_backend  # noqa: E402

#: model -> (preset, recipe YAML whose ``model`` and ``trainer.gradient_clip_val`` settings are used)
MODELS = {
    "dim_l2": ("dim_l2", "experiments/imagenet256/dim_l2.yaml"),
    "dim_h2": ("dim_h2", "experiments/imagenet256/dim_h2.yaml"),
    "dim_h2_512": ("dim_h2_512", "experiments/imagenet512/dim_h2_ft.yaml"),
    # U-ViT's ImageNet-256 training recipe (the H/2 config) with the L/2 backbone
    "uvit_l2": ("uvit_l2", "experiments/imagenet256/uvit_h2.yaml"),
    "dim_s2": ("dim_s2", "experiments/cifar10/dim_s2.yaml"),
}
#: config name prefix -> strategy name (the device count follows the prefix: ddp8, fsdp-full4, ...)
STRATEGIES = {"ddp": "ddp", "fsdp-full": "fsdp:FULL_SHARD", "fsdp-grad": "fsdp:SHARD_GRAD_OP"}
CONFIG_PATTERN = re.compile(r"^(ddp|fsdp-full|fsdp-grad)([1-9][0-9]*)$")
FSDP_OVERLAY = "experiments/overlays/fsdp.yaml"
#: environment that keeps NVLink multicast off in every rank (docs/scaling.md)
MULTICAST_OFF = {
    "NCCL_NVLS_ENABLE": "0",
    "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
    "NVSHMEM_DISABLE_NVLS": "1",
}


def parse_config(name: str) -> tuple[str, int]:
    """``ddp4`` -> ("ddp", 4), ``fsdp-grad8`` -> ("fsdp:SHARD_GRAD_OP", 8), ``single`` -> ("auto", 1)."""
    if name == "single":
        return "auto", 1
    match = CONFIG_PATTERN.match(name)
    if match is None:
        raise ValueError(name)
    return STRATEGIES[match.group(1)], int(match.group(2))


def make_strategy(strategy: str):
    """The Trainer's ``strategy`` argument: a name, or the FSDPStrategy of the FSDP overlay with ``sharding``."""
    if not strategy.startswith("fsdp:"):
        return strategy
    from lightning.pytorch.strategies import FSDPStrategy

    init = yaml.safe_load((REPO / FSDP_OVERLAY).read_text())["trainer"]["strategy"]["init_args"]
    policy = {_import_class(path) for path in init.get("auto_wrap_policy", [])}
    return FSDPStrategy(
        sharding_strategy=strategy.split(":", 1)[1],
        auto_wrap_policy=policy,
        state_dict_type=init.get("state_dict_type", "full"),
    )


def _import_class(path: str):
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


#: recipe keys that are not about the training step (a VAE is not loaded: the synthetic data are latents already)
_NOT_STEP_KEYS = {"backbone", "vae_path", "latent_scale", "init_from", "init_from_ema", "latent_shape"}
TAG = "bench_ddp"


def recipe(model: str) -> tuple[dict, float | None]:
    """The DiffusionModule arguments (backbone aside) and gradient clipping of ``model``'s experiment config."""
    config = yaml.safe_load((REPO / MODELS[model][1]).read_text())
    module_args = {k: v for k, v in config["model"].items() if k not in _NOT_STEP_KEYS}
    if "betas" in module_args:
        module_args["betas"] = tuple(module_args["betas"])
    return module_args, config.get("trainer", {}).get("gradient_clip_val")


# ---------------------------------------------------------------------------------------------------- worker
def _worker(args: argparse.Namespace) -> int:
    """One configuration, on every rank: build, train ``warmup + steps`` steps, rank 0 writes ``args.result``."""
    torch.set_flush_denormal(True)  # as the dimlab CLI does (CPU runs only)
    cuda = args.device == "cuda"
    if not cuda:  # one thread per rank in every configuration, so 1 and 2 CPU ranks compare like for like
        torch.set_num_threads(1)
    strategy, devices = parse_config(args.config)
    precision = args.precision or ("bf16-mixed" if cuda else "32-true")
    accumulate = args.accumulate
    module_args, clip = recipe(args.model)

    class SyntheticLatents(Dataset):
        """``length`` samples cycling through a fixed pool of random model inputs and labels."""

        def __init__(self, shape: tuple[int, ...], num_classes: int, length: int, pool: int = 256):
            g = torch.Generator().manual_seed(0)
            self.x = torch.randn(pool, *shape, generator=g)
            self.y = torch.randint(0, max(num_classes, 1), (pool,), generator=g)
            self.length = length

        def __len__(self):
            return self.length

        def __getitem__(self, i):
            return {"x": self.x[i % len(self.x)], "y": self.y[i % len(self.y)]}

    class StepTimer(L.Callback):
        """Wall time of steps ``warmup+1 .. warmup+steps`` on this rank, and the peak memory; gathered at the end."""

        def __init__(self):
            self.t0 = self.t1 = None
            self.loss_last = float("nan")

        def _sync(self, pl_module):
            if pl_module.device.type == "cuda":
                torch.cuda.synchronize(pl_module.device)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if (batch_idx + 1) % accumulate:  # only the micro-batches that ended with an optimizer step
                return
            step = trainer.global_step
            if step == args.warmup:
                trainer.strategy.barrier("bench_ddp_timing")
                self._sync(pl_module)
                self.t0 = time.perf_counter()
            elif step == args.warmup + args.steps:
                self._sync(pl_module)
                self.t1 = time.perf_counter()
                self.loss_last = float(outputs["loss"])

        def on_train_end(self, trainer, pl_module):
            if pl_module.device.type == "cuda":
                peaks = [
                    torch.cuda.max_memory_allocated(pl_module.device) / 2**30,
                    torch.cuda.max_memory_reserved(pl_module.device) / 2**30,
                ]
            else:  # ru_maxrss is in KiB on Linux
                peaks = [resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20] * 2
            mine = torch.tensor([self.t1 - self.t0, *peaks], dtype=torch.float64, device=pl_module.device)
            self.gathered = trainer.strategy.all_gather(mine).reshape(-1, 3).cpu()

    callbacks = [StepTimer()]
    if args.callbacks == "dimlab":
        callbacks += [PreemptionCheckpoint(), NonFiniteGuard()]
    L.seed_everything(0, workers=True, verbose=False)
    root = Path(args.result).parent / f"root_{args.config}"  # inside the parent's temporary folder
    trainer = L.Trainer(
        accelerator="gpu" if cuda else "cpu",
        devices=devices,
        strategy=make_strategy(strategy),
        accumulate_grad_batches=accumulate,
        precision=precision,
        max_steps=args.warmup + args.steps,
        gradient_clip_val=clip,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        default_root_dir=str(root),
    )
    device = trainer.strategy.root_device  # this rank's device (LOCAL_RANK is set in the launched ranks)
    if cuda:
        torch.cuda.set_device(device)  # no stray context on GPU 0 from rank 1
    preset = MODELS[args.model][0]
    family = "dim" if preset.startswith("dim") else "uvit"
    overrides = dict(QUICK_OVERRIDES[family]) if args.quick else {}
    if family == "dim":
        overrides["scan_backend"] = args.scan_backend
    with torch.device(device):  # built in place: a 400M-parameter init on the CPU takes a while
        module = DiffusionModule(build_backbone(preset, **overrides), **module_args)
    world = devices
    n = args.batch * world * (args.warmup + args.steps + 1) * accumulate
    data = SyntheticLatents(module.latent_shape, module.num_classes, n)
    loader = DataLoader(data, batch_size=args.batch, shuffle=False, drop_last=True, pin_memory=cuda)
    trainer.fit(module, loader)

    if trainer.is_global_zero:
        timer = callbacks[0]
        seconds = timer.gathered[:, 0].tolist()
        slowest = max(seconds)
        images = args.batch * world * args.steps * accumulate
        step_flops = backbone_cost(module.backbone).flops(
            args.batch * accumulate, training=True
        )  # per device
        record = {
            "config": args.config,
            "strategy": strategy,
            "devices": world,
            "status": "ok",
            "model": args.model,
            "params": sum(p.numel() for p in module.backbone.parameters()),
            "latent_shape": list(module.latent_shape),
            "precision": precision,
            "gradient_clip_val": clip,
            "callbacks": [type(c).__name__ for c in callbacks[1:]],
            "batch_per_device": args.batch,
            "accumulate_grad_batches": accumulate,
            "global_batch": args.batch * world * accumulate,
            "warmup": args.warmup,
            "steps": args.steps,
            "seconds": slowest,
            "seconds_per_rank": seconds,
            "step_ms": slowest / args.steps * 1e3,
            "img_per_s": images / slowest,
            "img_per_s_per_device": images / slowest / world,
            "model_tflops_per_s_per_device": step_flops * args.steps / slowest / 1e12,
            ("peak_mem_gib_per_rank" if cuda else "peak_rss_gib_per_rank"): timer.gathered[:, 1].tolist(),
            "loss_last": timer.loss_last,
            "process_group_backend": (
                torch.distributed.get_backend() if torch.distributed.is_initialized() else None
            ),
            "device_name": torch.cuda.get_device_name(device) if cuda else "cpu",
            "device_count_visible": torch.cuda.device_count() if cuda else 0,
            "nccl_nvls_enable": os.environ.get("NCCL_NVLS_ENABLE"),
            "multicast_env": {k: os.environ.get(k) for k in MULTICAST_OFF},
        }
        if cuda:
            record["peak_reserved_gib_per_rank"] = timer.gathered[:, 2].tolist()
        if family == "dim":
            record["scan_backend"] = resolve_backend(args.scan_backend, device)
        Path(args.result).write_text(json.dumps(record))
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return 0


# ---------------------------------------------------------------------------------------------------- parent
class _Workers:
    """The running worker, in its own process group so a timeout or a signal takes its launched ranks too."""

    def __init__(self):
        self.proc: subprocess.Popen | None = None

    def handle_signals(self) -> None:
        """On SIGTERM / SIGINT (e.g. from ``timeout``), kill the running worker's process group, then exit."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)

    def _kill(self, grace: float = 0.0) -> None:
        """SIGKILL whatever is left of the worker's process group, after up to ``grace`` seconds for it to exit."""
        if self.proc is None:
            return
        deadline = time.monotonic() + grace
        try:
            while time.monotonic() < deadline:
                os.killpg(self.proc.pid, 0)  # raises once no process of the group is left
                time.sleep(0.2)
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()

    def _on_signal(self, signum, frame):
        # `timeout` signals the benchmark; the ranks live in another process group and would outlive it
        self._kill()
        raise SystemExit(128 + signum)

    def run(self, command: list[str], env: dict[str, str], timeout: float) -> int | str:
        """Run ``command`` to its end (its output goes to ours); the exit code, or ``"timeout"``.

        Ranks still running once rank 0 has exited (a failed rank 0 leaves the others waiting in a collective)
        are killed after a 10 s grace period.
        """
        self.proc = subprocess.Popen(command, env=env, start_new_session=True)
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._kill()
            return "timeout"
        finally:
            self._kill(grace=10.0)
            self.proc = None
        return rc


def worker_env() -> dict[str, str]:
    """The workers' environment: ours, dimlab's ``src`` and this folder first on PYTHONPATH, multicast off."""
    src = str(Path(dimlab.__file__).resolve().parents[1])
    paths = [src, str(HERE), *[p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(dict.fromkeys(paths))}
    for key, value in MULTICAST_OFF.items():
        env.setdefault(key, value)
    return env


def _scaling(by_config: dict[str, dict]) -> dict:
    """Scaling efficiencies against ``ddp1`` (and ``single``), and FSDP against DDP on as many devices."""
    ok = {name: r for name, r in by_config.items() if r.get("status") == "ok"}
    out = {"efficiency": None, "efficiency_vs_single": None, "efficiency_by_config": {}, "fsdp_over_ddp": {}}
    if "ddp2" in ok and "ddp1" in ok:
        out["efficiency"] = ok["ddp2"]["img_per_s"] / (2 * ok["ddp1"]["img_per_s"])
    if "ddp2" in ok and "single" in ok:
        out["efficiency_vs_single"] = ok["ddp2"]["img_per_s"] / (2 * ok["single"]["img_per_s"])
    if "ddp1" in ok and "single" in ok:
        out["ddp1_over_single"] = ok["ddp1"]["img_per_s"] / ok["single"]["img_per_s"]
    for name, record in ok.items():
        if name == "single":
            continue
        strategy, devices = parse_config(name)
        if "ddp1" in ok:
            out["efficiency_by_config"][name] = record["img_per_s"] / (devices * ok["ddp1"]["img_per_s"])
        if strategy.startswith("fsdp") and f"ddp{devices}" in ok:
            out["fsdp_over_ddp"][name] = record["img_per_s"] / ok[f"ddp{devices}"]["img_per_s"]
    return out


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="where to write the JSON results (not with --worker)")
    parser.add_argument("--model", default="dim_l2", choices=sorted(MODELS))
    parser.add_argument("--batch", type=int, default=None, help="per-device batch (default 64; quick 4)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps, >= 1 (default 10; quick 2)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 30; quick 3)")
    parser.add_argument(
        "--configs",
        default="ddp1,ddp2,single",
        help="comma-separated, run in this order: ddpN, fsdp-fullN, fsdp-gradN (N devices), single",
    )
    parser.add_argument(
        "--accumulate", type=int, default=1, help="micro-batches per optimizer step (default 1)"
    )
    parser.add_argument(
        "--scan-backend", default="auto", help="DiM scan backend: auto, triton, cuda or torch"
    )
    parser.add_argument(
        "--precision", default=None, help="Trainer precision (default bf16-mixed; CPU 32-true)"
    )
    parser.add_argument(
        "--callbacks",
        default="dimlab",
        choices=["dimlab", "none"],
        help="dimlab: the per-step fault callbacks dimlab fit adds (PreemptionCheckpoint, NonFiniteGuard)",
    )
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu: gloo CPU ranks")
    parser.add_argument(
        "--config-timeout", type=float, default=None, help="seconds per configuration (default 180)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny model, few steps (smoke check; CPU is fine)"
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.batch = args.batch if args.batch is not None else (4 if args.quick else 64)
    args.warmup = args.warmup if args.warmup is not None else (2 if args.quick else 10)
    args.steps = args.steps if args.steps is not None else (3 if args.quick else 30)
    if args.config_timeout is None:
        args.config_timeout = 180.0
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.warmup < 1 or args.steps < 1 or args.batch < 1 or args.accumulate < 1:
        sys.exit(f"{TAG}: need --warmup >= 1, --steps >= 1, --batch >= 1, --accumulate >= 1")
    if args.worker:
        return _worker(args)
    if args.out is None:
        sys.exit(f"{TAG}: --out is required")
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in configs if c != "single" and not CONFIG_PATTERN.match(c)]
    if unknown or not configs:
        sys.exit(
            f"{TAG}: bad --configs {args.configs!r} ({', '.join(unknown) or 'empty'}); expected ddpN, "
            "fsdp-fullN, fsdp-gradN (N devices) or single"
        )
    visible = torch.cuda.device_count() if args.device == "cuda" else None  # NVML: no CUDA context here
    if args.device == "cuda" and not visible:
        sys.exit(f"{TAG}: --device cuda but no CUDA device is visible; use --device cpu --quick")

    env = worker_env()
    meta = run_metadata(
        torch.device("cpu"),  # the card is filled in from the workers: this process keeps off the GPUs
        argv,
        model=args.model,
        recipe=MODELS[args.model][1],
        quick=args.quick,
        batch_per_device=args.batch,
        warmup=args.warmup,
        steps=args.steps,
        configs=configs,
        callbacks=args.callbacks,
        scan_backend=args.scan_backend,
        accumulate_grad_batches=args.accumulate,
        nccl_nvls_enable=env.get("NCCL_NVLS_ENABLE"),
        multicast_env={k: env.get(k) for k in MULTICAST_OFF},
        launcher="one worker process per configuration; Lightning's subprocess launcher starts the other ranks",
        harness="lightning.Trainer + DiffusionModule, in-memory synthetic latents, DistributedSampler",
    )
    meta["device"] = "cpu (gloo ranks)" if args.device == "cpu" else "unknown (no worker finished)"
    log = ResultLog(args.out, meta, TAG)
    by_config: dict[str, dict] = {}
    workers = _Workers()
    workers.handle_signals()
    with tempfile.TemporaryDirectory(prefix="bench_ddp_") as tmp:
        for name in configs:
            strategy, devices = parse_config(name)
            record = {"config": name, "strategy": strategy, "devices": devices, "model": args.model}
            if visible is not None and devices > visible:
                record["status"] = f"skipped: needs {devices} CUDA devices, {visible} visible"
            else:
                result = Path(tmp) / f"{name}.json"
                command = [
                    sys.executable, str(Path(__file__).resolve()), "--worker", f"--config={name}",
                    f"--result={result}", f"--model={args.model}", f"--batch={args.batch}",
                    f"--warmup={args.warmup}", f"--steps={args.steps}", f"--scan-backend={args.scan_backend}",
                    f"--callbacks={args.callbacks}", f"--device={args.device}", f"--accumulate={args.accumulate}",
                    *([f"--precision={args.precision}"] if args.precision else []),
                    *(["--quick"] if args.quick else []),
                ]  # fmt: skip
                print(f"{TAG}: [{name}] {' '.join(command)}", flush=True)
                start = time.perf_counter()
                rc = workers.run(command, env, args.config_timeout)
                wall = time.perf_counter() - start
                if rc == 0 and result.is_file():
                    record = json.loads(result.read_text())
                elif rc == "timeout":
                    record["status"] = f"timeout after {args.config_timeout:.0f} s"
                else:
                    record["status"] = f"error: worker exit code {rc} (its output is above in the log)"
                record["worker_wall_s"] = wall
            if record.get("device_name") and args.device == "cuda":
                log.meta["device"] = record["device_name"]
            by_config[name] = record
            log.add(record)
    scaling = _scaling(by_config)
    log.finish(scaling=scaling)
    print_table(log.results, log.meta, scaling)
    print(f"results written to {args.out}")
    return 0 if all(r.get("status") == "ok" for r in log.results) else 1


def print_table(results: list[dict], meta: dict, scaling: dict) -> None:
    """The short summary table printed last."""
    print(
        f"\nScaling through lightning.Trainer: {meta['model']}, batch {meta['batch_per_device']} per device x "
        f"{meta['accumulate_grad_batches']} accumulated, {meta['steps']} timed steps after {meta['warmup']}, "
        f"{meta['device']}, multicast env {meta['multicast_env']}"
    )
    header = f"{'config':<12}{'strategy':>20}{'dev':>4}{'img/s':>10}{'img/s/dev':>10}{'step ms':>9}{'eff':>7}  peak GiB/rank"
    print(header)
    print("-" * len(header))
    for r in results:
        if r.get("status") != "ok":
            print(f"{r['config']:<12}{r['strategy']:>20}{r['devices']:>4}  {r['status'][:70]}")
            continue
        mem = r.get("peak_mem_gib_per_rank", r.get("peak_rss_gib_per_rank", []))
        eff = scaling["efficiency_by_config"].get(r["config"])
        eff_text = f"{eff:>7.3f}" if eff is not None else f"{'-':>7}"
        print(
            f"{r['config']:<12}{r['strategy']:>20}{r['devices']:>4}{r['img_per_s']:>10.1f}"
            f"{r['img_per_s_per_device']:>10.1f}{r['step_ms']:>9.1f}{eff_text}  {' / '.join(f'{m:.1f}' for m in mem)}"
        )

    def fmt(x):
        return "n/a" if x is None else f"{x:.3f}"

    for name, ratio in scaling["fsdp_over_ddp"].items():
        print(f"{name}: {ratio:.3f} of DDP's img/s on as many devices")
    print(
        f"scaling efficiency img/s(ddp2) / (2 x img/s(ddp1)): {fmt(scaling['efficiency'])}; "
        f"vs single (no DDP wrapper): {fmt(scaling['efficiency_vs_single'])}"
    )


if __name__ == "__main__":
    raise SystemExit(main())
