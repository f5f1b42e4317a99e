"""Generate-and-score loops: FID of a sampler's images, or of stored images, against reference statistics.

Each rank handles :func:`dimlab.eval.split.rank_slice` of the global sample indices and accumulates Inception
features in its own ``FrechetInceptionDistance``; at the end the feature sums are gathered once through
torchmetrics' state sync (``metric.sync_context()``, an all-gather over ``torch.distributed``), so every rank
returns the same FID over all N images. Launch the ranks however you like (``dimlab fid --devices N`` uses
Lightning Fabric; ``torchrun`` works too) as long as ``torch.distributed`` is initialised before scoring.
Lightning-free on purpose: the Lightning module only provides ``sample_fn``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from rich.progress import Progress

from dimlab.data.transforms import to_uint8
from dimlab.eval.fid import GaussianStats, frechet_distance, stats_from_metric
from dimlab.eval.inception import build_fid_metric, resolve_inception_weights
from dimlab.eval.ref_stats import ReferenceStats
from dimlab.eval.split import rank_slice, sample_seeds

__all__ = ["FIDResult", "SampleFn", "generate_and_score", "score_images"]

SampleFn = Callable[[torch.Tensor, torch.Tensor | None, list[int]], torch.Tensor]
"""``sample_fn(indices, labels, seeds) -> images in [-1, 1]`` (B, C, H, W); sample i must depend only on
``labels[i]`` and ``seeds[i]`` (e.g. ``dimlab.sampling.sampler.per_sample_noise``) for world-size-independent runs."""


@dataclass(frozen=True)
class FIDResult:
    """FID over all ranks' images, how many were scored, their feature statistics and the wall time (s)."""

    fid: float
    num_samples: int
    stats: GaussianStats
    seconds: float


def _check_world(rank: int, world_size: int) -> None:
    if world_size == 1:
        return

    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(
            f"world_size={world_size} but torch.distributed is not initialised: features cannot be gathered "
            "(launch with `dimlab fid --devices N`, Lightning Fabric or torchrun)"
        )
    if dist.get_world_size() != world_size or dist.get_rank() != rank:
        raise RuntimeError(
            f"rank/world_size ({rank}/{world_size}) disagree with torch.distributed "
            f"({dist.get_rank()}/{dist.get_world_size()})"
        )


def _metric_or_build(metric, inception_weights, device):
    """The metric to use; resolving the weights here makes a missing file fail before any sampling."""
    if metric is not None:
        return metric

    return build_fid_metric(resolve_inception_weights(inception_weights), device=device)


def _as_rgb_uint8(images: torch.Tensor, expected: int, value_range) -> torch.Tensor:
    if images.dim() != 4 or images.shape[0] != expected or images.shape[1] not in (1, 3):
        raise ValueError(
            f"sample_fn must return ({expected}, 3 or 1, H, W) images, got {tuple(images.shape)}"
        )
    if not images.is_floating_point():
        raise ValueError(f"sample_fn must return float images in {value_range}, got dtype {images.dtype}")
    u8 = to_uint8(images.detach(), value_range)
    # Grey images (e.g. digits) are repeated to RGB: the Inception takes 3 channels.
    return u8.expand(-1, 3, -1, -1) if u8.shape[1] == 1 else u8


def _finish(metric, ref: ReferenceStats, expected: int, start: float) -> FIDResult:
    with metric.sync_context():
        stats = stats_from_metric(metric, real=False)
    if stats.count != expected:
        raise RuntimeError(f"scored {stats.count} images over all ranks, expected {expected}")
    if stats.mu.shape != ref.mu.shape:
        raise ValueError(f"feature size {stats.mu.shape[0]} does not match the reference's {ref.mu.shape[0]}")
    fid = frechet_distance(stats.mu, stats.sigma, ref.mu, ref.sigma)
    return FIDResult(fid=fid, num_samples=expected, stats=stats, seconds=time.perf_counter() - start)


def _progress(enabled: bool, total: int, description: str):
    progress = Progress(disable=not enabled, transient=False)
    return progress, progress.add_task(description, total=total)


def generate_and_score(
    sample_fn: SampleFn,
    num_samples: int,
    batch_size: int,
    ref_stats: ReferenceStats,
    rank: int = 0,
    world_size: int = 1,
    *,
    labels: torch.Tensor | None = None,
    base_seed: int = 0,
    metric=None,
    inception_weights: str | Path | None = None,
    device: str | torch.device = "cpu",
    value_range: tuple[float, float] = (-1.0, 1.0),
    on_batch: Callable[[torch.Tensor, torch.Tensor], None] | None = None,
    progress: bool = False,
) -> FIDResult:
    """Draw this rank's share of ``num_samples`` images with ``sample_fn`` and return the FID over all ranks.

    ``labels`` holds all ``num_samples`` global labels (see :func:`dimlab.eval.split.official_labels`) or None
    for unconditional models; seeds come from :func:`dimlab.eval.split.sample_seeds`. ``metric`` is a
    ``FrechetInceptionDistance`` (built from ``inception_weights`` when omitted; a missing weights file raises
    before ``sample_fn`` is ever called). Images are rounded to uint8 like saved PNGs; ``on_batch(indices,
    uint8_images)`` can store them.
    """
    if num_samples < 2:
        raise ValueError(f"num_samples must be >= 2 for FID, got {num_samples}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if labels is not None and tuple(labels.shape) != (num_samples,):
        raise ValueError(
            f"labels must hold one label per sample, shape ({num_samples},), got {tuple(labels.shape)}"
        )
    metric = _metric_or_build(metric, inception_weights, device)
    _check_world(rank, world_size)
    metric.reset()
    start = time.perf_counter()
    mine = rank_slice(num_samples, rank, world_size)
    bar, task = _progress(progress, len(mine), f"sampling (rank {rank})")
    with bar:
        for lo in range(mine.start, mine.stop, batch_size):
            indices = torch.arange(lo, min(lo + batch_size, mine.stop))
            batch_labels = None if labels is None else labels[indices]
            images = sample_fn(indices, batch_labels, sample_seeds(base_seed, indices))
            u8 = _as_rgb_uint8(images, len(indices), value_range)
            metric.update(u8.to(metric.device), real=False)
            if on_batch is not None:
                on_batch(indices, u8.cpu())
            bar.advance(task, len(indices))
    return _finish(metric, ref_stats, num_samples, start)


def score_images(
    source,
    ref_stats: ReferenceStats,
    batch_size: int = 50,
    rank: int = 0,
    world_size: int = 1,
    *,
    num_samples: int | None = None,
    metric=None,
    inception_weights: str | Path | None = None,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> FIDResult:
    """FID of stored uint8 images (``source.batch(indices)``, see :mod:`dimlab.eval.images`) vs ``ref_stats``.

    Uses the first ``num_samples`` images (all by default), split across ranks like :func:`generate_and_score`.
    """
    total = len(source) if num_samples is None else num_samples
    if total > len(source):
        raise ValueError(f"asked for {total} images but {source.description} holds {len(source)}")
    if total < 2:
        raise ValueError(f"need at least 2 images for FID, got {total}")
    metric = _metric_or_build(metric, inception_weights, device)
    _check_world(rank, world_size)
    metric.reset()
    start = time.perf_counter()
    mine = rank_slice(total, rank, world_size)
    bar, task = _progress(progress, len(mine), f"scoring (rank {rank})")
    with bar:
        for lo in range(mine.start, mine.stop, batch_size):
            indices: Sequence[int] = range(lo, min(lo + batch_size, mine.stop))
            metric.update(source.batch(indices).to(metric.device), real=False)
            bar.advance(task, len(indices))
    return _finish(metric, ref_stats, total, start)
