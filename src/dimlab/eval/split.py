"""Splitting an N-sample evaluation across ranks so the union of images never depends on the world size.

Three things make a run reproducible on one GPU or eight:

* :func:`rank_slice` gives each rank a disjoint, contiguous, balanced slice of the global sample indices;
* :func:`sample_seeds` derives one seed per *global* index from ``base_seed`` (the sampler draws each sample's
  noise from its own seed, see ``dimlab.sampling.sampler.per_sample_noise``);
* :func:`official_labels` draws all N class labels at once from ``seed``; each rank indexes into that tensor.

The official DiM/U-ViT evaluation seeds each device separately (``seed + rank``-style), so its images change with
the number of GPUs; ours do not, at the price of not reproducing their exact images (the label *distribution* is
the same).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["official_labels", "rank_slice", "sample_seeds"]

LABEL_MODES = ("uniform", "class_frequency")


def rank_slice(num_samples: int, rank: int, world_size: int) -> range:
    """Global indices rank ``rank`` of ``world_size`` generates: contiguous, disjoint, sizes differ by at most 1."""
    if num_samples < 0:
        raise ValueError(f"num_samples must be >= 0, got {num_samples}")
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    base, extra = divmod(num_samples, world_size)
    start = rank * base + min(rank, extra)
    stop = start + base + (1 if rank < extra else 0)
    return range(start, stop)


def sample_seeds(base_seed: int, indices: Sequence[int] | torch.Tensor) -> list[int]:
    """One 63-bit seed per global sample index, a pure function of ``(base_seed, index)``.

    NumPy's ``SeedSequence`` hashes the pair, so neighbouring indices and neighbouring base seeds give unrelated
    streams (``base_seed + index`` would make run ``s`` and run ``s + 1`` share all but one image).
    """
    if base_seed < 0:
        raise ValueError(f"base_seed must be >= 0, got {base_seed}")
    idx = indices.tolist() if isinstance(indices, torch.Tensor) else list(indices)
    seeds = []
    for i in idx:
        if i < 0:
            raise ValueError(f"sample indices must be >= 0, got {i}")
        words = np.random.SeedSequence([int(base_seed), int(i)]).generate_state(2, dtype=np.uint32)
        seeds.append(((int(words[0]) << 32) | int(words[1])) & 0x7FFF_FFFF_FFFF_FFFF)
    return seeds


def official_labels(
    num: int,
    num_classes: int,
    seed: int,
    mode: str = "uniform",
    class_counts: Sequence[int] | np.ndarray | torch.Tensor | None = None,
) -> torch.Tensor:
    """All ``num`` class labels (int64, CPU) for an evaluation, drawn the way the official evaluation draws them.

    ``mode="class_frequency"``: ``torch.multinomial`` over the training-set class frequencies with replacement
    (U-ViT/DiM's ``imagenet`` dataset, i.e. the 256-px configs); ``class_counts`` are the per-class image counts.
    ``mode="uniform"``: ``torch.randint(0, num_classes)`` (the ``imagenet512_features`` dataset, CIFAR).
    """
    if num < 0:
        raise ValueError(f"num must be >= 0, got {num}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    g = torch.Generator(device="cpu").manual_seed(int(seed))
    if mode == "uniform":
        if class_counts is not None:
            raise ValueError("class_counts is only used with mode='class_frequency'")
        return torch.randint(0, num_classes, (num,), generator=g, dtype=torch.long)
    if mode == "class_frequency":
        if class_counts is None:
            raise ValueError("mode='class_frequency' needs class_counts (training images per class)")
        # float32 frequencies, as U-ViT's dataset class builds them.
        counts = torch.as_tensor(np.asarray(class_counts), dtype=torch.float32).flatten()
        if counts.numel() != num_classes:
            raise ValueError(f"class_counts has {counts.numel()} entries, expected num_classes={num_classes}")
        if (counts < 0).any() or counts.sum() <= 0:
            raise ValueError("class_counts must be non-negative with a positive total")
        if num == 0:
            return torch.zeros(0, dtype=torch.long)
        return torch.multinomial(counts / counts.sum(), num, replacement=True, generator=g)
    raise ValueError(f"label mode must be one of {LABEL_MODES}, got {mode!r}")
