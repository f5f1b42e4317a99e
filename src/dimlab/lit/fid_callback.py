"""FID during training: every K optimizer steps, N samples from the EMA weights scored against cached statistics.

The generation, quantisation, rank split and feature gathering are :func:`dimlab.eval.score.generate_and_score`,
the same code ``dimlab fid`` runs, so an in-training number and an offline one over the same weights, seeds and
settings agree. Only the scheduling, the metric name and the logging live here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info

from dimlab.diffusion.dpm_solver import fast_orders
from dimlab.diffusion.samplers import SAMPLERS
from dimlab.eval.inception import FEATURE_DIMS, build_fid_metric, resolve_inception_weights
from dimlab.eval.ref_stats import load_reference_stats
from dimlab.eval.score import generate_and_score
from dimlab.eval.split import official_labels

__all__ = ["FIDCallback", "fid_metric_key"]


def _count_tag(num_samples: int) -> str:
    return f"{num_samples // 1000}k" if num_samples % 1000 == 0 else str(num_samples)


def fid_metric_key(num_samples: int, sampler: str, steps: int, cfg_scale: float) -> str:
    """The logged name of an FID setting, e.g. ``fid/10k_dpmpp50_cfg0.4`` (10 000 samples, DPM-Solver++ 50 steps,
    CFG scale 0.4): numbers from different settings are never mixed up in a dashboard."""
    sampler_tag = sampler.replace("+", "p")
    return f"fid/{_count_tag(num_samples)}_{sampler_tag}{steps}_cfg{cfg_scale:g}"


class FIDCallback(L.Callback):
    """Every ``every_n_steps`` optimizer steps, FID of ``num_samples`` EMA samples against ``ref_stats``.

    Each rank samples a disjoint slice of the N global sample indices (seeds and labels depend on the global
    index only, so the images do not depend on the number of GPUs) and the Inception feature sums are gathered
    once. The value is logged to every logger under :func:`fid_metric_key` at the current ``global_step``, with
    the wall time under ``perf/fid_seconds_<setting>``, and put in ``trainer.callback_metrics`` (so
    ``ModelCheckpoint(monitor="fid/...")`` and the run summary see it).

    Everything that can be checked without sampling (Inception weights file, reference statistics, arguments) is
    checked in ``setup``, before the first training step: a missing weights file fails the run at start, not hours
    in.

    Args:
        every_n_steps: evaluate when ``global_step`` is a positive multiple of this.
        num_samples: images per evaluation, over all ranks (e.g. 10000; 50000 is the published protocol).
        ref_stats: ``.npz`` reference statistics (``dimlab fid ref-stats`` output or a pytorch-fid file); the
            feature size of the file (2048 normally) selects the Inception layer.
        sampler, steps, cfg_scale: the sampling setting (see ``dimlab.diffusion.samplers``; U-ViT CFG convention).
        batch_size: images sampled at once per rank.
        inception_weights: the FID Inception weights file; default: torch hub's cache
            (``$TORCH_HOME/hub/checkpoints/weights-inception-2015-12-05-6726825d.pth``).
        seed: base seed of the per-sample noise and of the labels (the same images at every evaluation).
        label_mode: ``uniform`` class labels, or ``class_frequency`` (the official ImageNet-256 protocol, needs
            ``class_counts``, the training images per class). Unconditional models ignore labels.
        class_counts: per-class training image counts for ``label_mode: class_frequency``.
    """

    def __init__(
        self,
        every_n_steps: int,
        num_samples: int,
        ref_stats: str | Path,
        sampler: str = "dpm++",
        steps: int = 50,
        cfg_scale: float = 0.0,
        batch_size: int = 100,
        inception_weights: str | Path | None = None,
        seed: int = 0,
        label_mode: Literal["uniform", "class_frequency"] = "uniform",
        class_counts: Sequence[int] | None = None,
    ):
        if every_n_steps < 1:
            raise ValueError(f"FIDCallback.every_n_steps must be >= 1, got {every_n_steps}")
        if num_samples < 2:
            raise ValueError(f"FIDCallback.num_samples must be >= 2 for FID, got {num_samples}")
        if batch_size < 1:
            raise ValueError(f"FIDCallback.batch_size must be >= 1, got {batch_size}")
        if sampler not in SAMPLERS:
            raise ValueError(f"FIDCallback.sampler must be one of {SAMPLERS}, got {sampler!r}")
        if steps < 1:
            raise ValueError(f"FIDCallback.steps must be >= 1, got {steps}")
        if sampler in ("dpm++", "dpm"):
            try:
                fast_orders(steps, order=3)  # the Sampler's DPM-Solver setting; fails here, not mid-training
            except ValueError as err:
                raise ValueError(f"FIDCallback: sampler {sampler!r} with steps={steps}: {err}") from err
        if not math.isfinite(cfg_scale) or cfg_scale < 0:
            raise ValueError(f"FIDCallback.cfg_scale must be finite and >= 0, got {cfg_scale}")
        if seed < 0:
            raise ValueError(f"FIDCallback.seed must be >= 0, got {seed}")
        if label_mode == "class_frequency" and class_counts is None:
            raise ValueError(
                "FIDCallback.label_mode='class_frequency' needs class_counts (training images per class)"
            )
        if label_mode not in ("uniform", "class_frequency"):
            raise ValueError(
                f"FIDCallback.label_mode must be 'uniform' or 'class_frequency', got {label_mode!r}"
            )
        self.every_n_steps = every_n_steps
        self.num_samples = num_samples
        self.ref_stats_path = Path(ref_stats)
        self.sampler = sampler
        self.steps = steps
        self.cfg_scale = float(cfg_scale)
        self.batch_size = batch_size
        self.inception_weights = inception_weights
        self.seed = seed
        self.label_mode = label_mode
        self.class_counts = None if class_counts is None else [int(c) for c in class_counts]
        self.key = fid_metric_key(num_samples, sampler, steps, self.cfg_scale)
        self.history: list[tuple[int, float]] = []
        self._ref = None
        self._metric = None
        self._last_step = -1

    @property
    def state_key(self) -> str:
        # Several FID callbacks (different settings) may coexist in one Trainer.
        return f"FIDCallback[{self.key}]"

    def setup(self, trainer, pl_module, stage: str) -> None:
        """Load the reference statistics, the Inception network and the VAE now, so that problems surface
        before training."""
        if stage != "fit" or self._metric is not None:
            return
        if getattr(pl_module, "latent_space", False):
            _ = pl_module.vae

        weights = resolve_inception_weights(self.inception_weights)
        ref = load_reference_stats(self.ref_stats_path)
        feature = int(ref.mu.shape[0])
        if feature not in FEATURE_DIMS:
            raise ValueError(
                f"{self.ref_stats_path}: {feature}-d reference features, but the Inception features are one of "
                f"{FEATURE_DIMS} (2048 for standard FID)"
            )
        num_classes = int(getattr(pl_module, "num_classes", 0) or 0)
        if self.class_counts is not None and len(self.class_counts) != num_classes:
            raise ValueError(
                f"FIDCallback.class_counts has {len(self.class_counts)} entries, the model has {num_classes} classes"
            )
        self._ref = ref
        self._metric = build_fid_metric(weights, feature=feature)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        # global_step only moves on optimizer steps; with gradient accumulation this hook runs several times per step.
        if step == 0 or step % self.every_n_steps or step == self._last_step:
            return
        self._last_step = step
        self.evaluate(trainer, pl_module)

    @torch.no_grad()
    def evaluate(self, trainer, pl_module) -> float:
        """Sample, score and log now (every rank must call this); returns the FID over all ranks' images."""
        if self._metric is None:
            raise RuntimeError(
                "FIDCallback.evaluate called before setup (is the callback attached to the Trainer?)"
            )
        sampler = pl_module.sampler(use_ema=True)
        labels = None
        if sampler.class_conditional:
            labels = official_labels(
                self.num_samples, sampler.num_classes, self.seed, self.label_mode, self.class_counts
            )

        def sample_fn(indices, batch_labels, seeds):
            return sampler.sample(
                batch_labels, seeds, cfg_scale=self.cfg_scale, sampler=self.sampler, steps=self.steps
            )

        metric = self._metric.to(pl_module.device)
        result = generate_and_score(
            sample_fn,
            self.num_samples,
            self.batch_size,
            self._ref,
            trainer.global_rank,
            trainer.world_size,
            labels=labels,
            base_seed=self.seed,
            metric=metric,
            device=pl_module.device,
        )
        step = trainer.global_step
        self.history.append((step, result.fid))
        trainer.callback_metrics[self.key] = torch.tensor(result.fid)
        if trainer.is_global_zero:
            timing_key = "perf/fid_seconds_" + self.key.removeprefix("fid/")
            for logger in trainer.loggers:
                logger.log_metrics({self.key: result.fid, timing_key: result.seconds}, step=step)
        rank_zero_info(
            f"step {step}: {self.key} = {result.fid:.4f} ({result.num_samples} samples, {result.seconds:.1f} s)"
        )
        return result.fid

    def state_dict(self) -> dict:
        return {"history": list(self.history), "last_step": self._last_step}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = [tuple(item) for item in state_dict.get("history", [])]
        self._last_step = int(state_dict.get("last_step", -1))
