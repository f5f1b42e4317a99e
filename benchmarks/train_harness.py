"""The training-step harness of ``bench_train.py`` and ``profile_train.py``: real DiffusionModule steps without
the Lightning Trainer, one model and one set of overhead knobs at a time (what one step is: ``bench_train.py``'s
docstring).
"""

from __future__ import annotations

import statistics
import time

import torch

from bench_common import MODELS, QUICK_OVERRIDES, ModelCase, free_memory, is_oom, synchronize
from dimlab.lit.module import DiffusionModule
from dimlab.lit.optim_step import clip_to_norm
from dimlab.models.presets import build_backbone

#: The overhead knobs a variant combines (``eager`` = none; see ``bench_train.py``).
KNOBS = ("eager", "ckpt", "compile", "graphs", "unfused")


@torch.no_grad()
def unfused_tail(params: list[torch.Tensor], clip: float | None) -> None:
    """The optimizer-step tail before :mod:`dimlab.lit.optim_step` (the ``unfused`` knob, for A/B): the logged
    grad norm from one norm kernel per parameter, then ``clip_grad_norm_`` computing the norm again."""
    norms = [p.grad.detach().norm(2) for p in params if p.grad is not None]
    if norms:
        torch.linalg.vector_norm(torch.stack(norms).float(), 2)
    if clip is not None:
        torch.nn.utils.clip_grad_norm_(params, clip)


@torch.no_grad()
def per_tensor_ema_update(ema, source: torch.nn.Module) -> None:
    """The EMA step as one ``lerp_`` per tensor (before ``EMA.update`` went multi-tensor; the ``unfused`` knob)."""
    ema_state = ema.module.state_dict()
    for name, value in source.state_dict().items():
        target = ema_state[name]
        if target.dtype.is_floating_point:
            target.lerp_(value.detach().to(target.dtype), 1.0 - ema.decay)
        else:
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
        if "unfused" in knobs:
            self.optimizer = _multi_tensor_copy(self.optimizer)
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.scheduler.lr_lambdas[0])
        self.params = [p for p in module.backbone.parameters() if p.requires_grad]
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
        if "unfused" in self.knobs:
            unfused_tail(self.params, self.case.clip)
        else:
            module.on_after_backward()
            module.on_before_optimizer_step(opt)
            if self.case.clip is not None:
                clip_to_norm(opt, self.case.clip, module.step_grad_norm.get(opt))
        opt.step()
        self.scheduler.step()
        _record(events, 3)
        if "unfused" in self.knobs:
            per_tensor_ema_update(module.ema, module.backbone)
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


def _multi_tensor_copy(optimizer: torch.optim.AdamW) -> torch.optim.AdamW:
    """AdamW over the same parameter groups and hyper-parameters, multi-tensor (``foreach``) instead of fused."""
    groups = [{k: v for k, v in g.items() if k not in ("foreach", "fused")} for g in optimizer.param_groups]
    return torch.optim.AdamW(groups, fused=False)


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
    """``eager,compile+unfused`` -> [set(), {"compile", "unfused"}]; unknown knobs are an error."""
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
