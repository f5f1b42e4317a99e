"""Fréchet distance between Gaussian feature statistics, in float64, and statistics read out of torchmetrics.

torchmetrics' ``FrechetInceptionDistance.compute`` only compares the two feature sets it accumulated itself; it
cannot take stored (mu, sigma) such as U-ViT's ``fid_stats_*.npz``. So generated features are accumulated in the
metric (which gives us its DDP state sync for free) and the distance to stored statistics is computed here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["GaussianStats", "frechet_distance", "stats_from_metric"]


@dataclass(frozen=True)
class GaussianStats:
    """Mean ``mu`` (d,) and covariance ``sigma`` (d, d) of a feature set, float64; ``count`` images if known."""

    mu: np.ndarray
    sigma: np.ndarray
    count: int | None = None

    def __post_init__(self):
        mu = np.asarray(self.mu, dtype=np.float64)
        sigma = np.asarray(self.sigma, dtype=np.float64)
        if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
            raise ValueError(f"expected mu (d,) and sigma (d, d), got mu {mu.shape} and sigma {sigma.shape}")
        object.__setattr__(self, "mu", mu)
        object.__setattr__(self, "sigma", sigma)


def frechet_distance(
    mu1: np.ndarray | torch.Tensor,
    sigma1: np.ndarray | torch.Tensor,
    mu2: np.ndarray | torch.Tensor,
    sigma2: np.ndarray | torch.Tensor,
) -> float:
    """``||mu1 - mu2||^2 + tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^{1/2})`` computed in float64.

    The trace of the matrix square root is taken as ``sum sqrt(eig(S1^{1/2} S2 S1^{1/2}))``: that matrix is
    symmetric positive semi-definite and has the same eigenvalues as ``S1 S2``, so a symmetric eigensolver
    applies and no complex parts appear (torchmetrics uses ``eigvals(S1 S2)``, pytorch-fid ``scipy.linalg.sqrtm``;
    all three agree on well-posed inputs). Eigenvalues that round to slightly below zero count as zero.
    """
    m1 = torch.as_tensor(np.asarray(mu1), dtype=torch.float64)
    m2 = torch.as_tensor(np.asarray(mu2), dtype=torch.float64)
    s1 = torch.as_tensor(np.asarray(sigma1), dtype=torch.float64)
    s2 = torch.as_tensor(np.asarray(sigma2), dtype=torch.float64)
    d = m1.shape[-1]
    if m1.shape != (d,) or m2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(
            f"shape mismatch: mu1 {tuple(m1.shape)}, sigma1 {tuple(s1.shape)}, "
            f"mu2 {tuple(m2.shape)}, sigma2 {tuple(s2.shape)} (expected (d,), (d, d) twice)"
        )
    for name, t in (("mu1", m1), ("mu2", m2), ("sigma1", s1), ("sigma2", s2)):
        if not torch.isfinite(t).all():
            raise ValueError(f"{name} contains NaN or inf")
    s1 = (s1 + s1.T) / 2
    s2 = (s2 + s2.T) / 2
    evals1, evecs1 = torch.linalg.eigh(s1)
    root1 = (evecs1 * evals1.clamp_min(0).sqrt()) @ evecs1.T
    inner = root1 @ s2 @ root1
    tr_covmean = torch.linalg.eigvalsh((inner + inner.T) / 2).clamp_min(0).sqrt().sum()
    diff = m1 - m2
    return float(diff.dot(diff) + s1.trace() + s2.trace() - 2 * tr_covmean)


def stats_from_metric(metric, real: bool = False) -> GaussianStats:
    """Mean and covariance of the real or fake features a ``FrechetInceptionDistance`` has accumulated.

    Uses exactly torchmetrics' own estimator (unbiased covariance from the float64 sum and outer-product sum). Call
    it inside ``metric.sync_context()`` under DDP to get the statistics over all ranks.
    """
    prefix = "real" if real else "fake"
    total = getattr(metric, f"{prefix}_features_sum")
    outer = getattr(metric, f"{prefix}_features_cov_sum")
    n = int(getattr(metric, f"{prefix}_features_num_samples"))
    if n < 2:
        raise ValueError(f"need at least 2 {prefix} images for feature statistics, the metric holds {n}")
    mean = (total.double() / n).unsqueeze(0)
    cov = (outer.double() - n * mean.T.mm(mean)) / (n - 1)
    return GaussianStats(mu=mean.squeeze(0).cpu().numpy(), sigma=cov.cpu().numpy(), count=n)
