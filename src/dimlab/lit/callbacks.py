"""Callbacks every dimlab run can use: a machine-readable run summary and sample grids."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_only

from dimlab.eval.split import sample_seeds
from dimlab.files import atomic_write
from dimlab.sampling.images import save_grid, to_uint8_hwc


class RunSummary(L.Callback):
    """Write ``<default_root_dir>/summary.json`` at the end of ``fit``.

    It holds the final step, the mean training loss over the last ``window`` steps, training images/s (global,
    measured after this run's first ``skip_steps`` steps, so resumed runs report it too), the backbone's parameter
    count, whether ``max_steps`` was reached, and ``metrics``: the last value of every scalar the run logged, with
    ``metrics_step``, the optimizer step each of them was logged at. Metrics logged every step belong to the final
    step; periodic ones (``val/*`` after each validation pass, ``data/skipped_samples`` every
    ``log_every_n_steps``, FID) to the step they were last computed at. Ablation runners and benchmarks read this
    file instead of parsing logger output.

    The steps come from the module's :attr:`~dimlab.lit.module.DiffusionModule.recently_logged` (the names passed
    to ``self.log`` since they were last taken); a module without it gets no ``metrics_step``.
    """

    def __init__(self, window: int = 50, skip_steps: int = 5):
        self.window = window
        self.skip_steps = skip_steps
        self._losses: list[float] = []
        self._images = 0
        self._batches = 0  # of this run: a resumed run starts at a later global step
        self._t0: float | None = None
        self._metric_steps: dict[str, int] = {}

    def _take_logged(self, trainer, pl_module) -> None:
        """Everything logged since the last call belongs to the current optimizer step count."""
        logged = getattr(pl_module, "recently_logged", None)
        if logged is None:
            return
        for name in logged:
            self._metric_steps[name] = trainer.global_step
        logged.clear()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        # After the previous batch's hooks and any validation pass in between, before this batch logs anything.
        self._take_logged(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is not None:
            self._losses = (self._losses + [float(loss.detach())])[-self.window :]
        self._batches += 1
        if self._batches == self.skip_steps and self._t0 is None:
            self._t0 = time.perf_counter()
            self._images = 0
        elif self._t0 is not None:
            self._images += batch["x"].shape[0] * trainer.world_size

    def on_train_end(self, trainer, pl_module):
        self._take_logged(trainer, pl_module)
        self._write(trainer, pl_module)

    @rank_zero_only
    def _write(self, trainer, pl_module) -> None:
        elapsed = time.perf_counter() - self._t0 if self._t0 is not None else 0.0
        max_steps = trainer.max_steps
        metrics = {
            k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1
        }
        summary = {
            "global_step": trainer.global_step,
            "final_loss": float(np.mean(self._losses)) if self._losses else math.nan,
            "images_per_sec": self._images / elapsed if elapsed > 0 else math.nan,
            "num_parameters": sum(p.numel() for p in pl_module.backbone.parameters()),
            "finished": max_steps is not None and max_steps > 0 and trainer.global_step >= max_steps,
            "metrics": metrics,
        }
        if hasattr(pl_module, "recently_logged"):
            steps = self._metric_steps
            # callback_metrics may also hold Lightning's "<name>_step" / "<name>_epoch" forms of a logged name
            bases = {k: k if k in steps else k.removesuffix("_step").removesuffix("_epoch") for k in metrics}
            summary["metrics_step"] = {k: steps[base] for k, base in bases.items() if base in steps}
        with atomic_write(Path(trainer.default_root_dir) / "summary.json", "w") as fh:
            fh.write(json.dumps(summary, indent=2, sort_keys=True))


class SampleGrid(L.Callback):
    """Every ``every_n_steps`` optimizer steps, sample a grid from the EMA weights and log it.

    One row per class (``classes`` in that order, else the first ``max_classes``), ``per_class`` columns, fixed
    seeds (the rule of ``dimlab fid``, :func:`dimlab.eval.split.sample_seeds`) so grids are comparable across
    steps. Unconditional models get ``len(classes)`` (or ``max_classes``) rows of unconditional samples. The PNG
    goes to ``<default_root_dir>/samples/step_XXXXXXX.png`` and, with a W&B logger, to ``samples/grid`` as an
    image. ``classes`` outside the model's range fail in ``setup``, before the first training step.
    """

    def __init__(
        self,
        every_n_steps: int = 5000,
        per_class: int = 8,
        max_classes: int = 10,
        cfg_scale: float = 0.0,
        sampler: str = "dpm++",
        steps: int = 50,
        seed: int = 0,
        classes: list[int] | None = None,
    ):
        self.every_n_steps = every_n_steps
        self.per_class = per_class
        self.max_classes = max_classes
        self.cfg_scale = cfg_scale
        self.sampler = sampler
        self.steps = steps
        self.seed = seed
        self.classes = None if classes is None else [int(c) for c in classes]
        self._last_step = -1

    def setup(self, trainer, pl_module, stage: str) -> None:
        """Check ``classes`` against the model's class count; load the VAE that decoding will need."""
        if getattr(pl_module, "latent_space", False):
            _ = pl_module.vae  # fail now, not at the first grid, when the VAE folder is missing
        if self.classes is None or not pl_module.hparams.class_conditional:
            return
        for label in self.classes:
            if not 0 <= label < pl_module.num_classes:
                raise ValueError(
                    f"SampleGrid.classes: {label} is outside [0, {pl_module.num_classes}), the model's class ids"
                )

    def labels(self, pl_module) -> list[int]:
        """The grid's labels, row by row: ``per_class`` of each class."""
        if self.classes is None:
            return pl_module.grid_labels(self.per_class, self.max_classes)
        if not pl_module.hparams.class_conditional:
            return [pl_module.null_class] * (self.per_class * len(self.classes))
        return [label for label in self.classes for _ in range(self.per_class)]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if self.every_n_steps <= 0 or step == 0 or step % self.every_n_steps or step == self._last_step:
            return
        self._last_step = step
        self.log_grid(trainer, pl_module)

    @rank_zero_only
    def log_grid(self, trainer, pl_module) -> Path:
        labels = self.labels(pl_module)
        seeds = sample_seeds(self.seed, range(len(labels)))
        was_training = pl_module.training
        images = pl_module.sampler(use_ema=True).sample(
            labels, seeds, cfg_scale=self.cfg_scale, sampler=self.sampler, steps=self.steps
        )
        pl_module.train(was_training)
        path = Path(trainer.default_root_dir) / "samples" / f"step_{trainer.global_step:07d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_grid(to_uint8_hwc(images), path, nrow=self.per_class)
        for logger in trainer.loggers:
            log_image = getattr(logger, "log_image", None)
            if callable(log_image):
                log_image(
                    key="samples/grid",
                    images=[str(path)],
                    step=trainer.global_step,
                    caption=[f"step {trainer.global_step}, {self.sampler}{self.steps}, cfg {self.cfg_scale}"],
                )
        return path
