"""Frechet distance in float64 vs SciPy and vs torchmetrics, and the stored-statistics path."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from dimlab.eval.fid import GaussianStats, frechet_distance, stats_from_metric
from dimlab.eval.ref_stats import ReferenceStats, load_reference_stats


def _scipy_fid(mu1, s1, mu2, s2) -> float:
    """pytorch-fid's formula in float64 NumPy/SciPy (the reference implementation)."""
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean.real))


def _features(rng, n, d, shift=0.0, scale=1.0):
    mixing = rng.normal(size=(d, d)) / np.sqrt(d)
    return (rng.normal(size=(n, d)) @ mixing) * scale + shift


@pytest.mark.parametrize(("n", "d"), [(400, 32), (300, 96), (40, 64)])
def test_matches_float64_scipy_reference(numpy_rng, n, d):
    a = _features(numpy_rng, n, d)
    b = _features(numpy_rng, n, d, shift=0.3, scale=1.2)
    mu1, s1 = a.mean(0), np.cov(a, rowvar=False)
    mu2, s2 = b.mean(0), np.cov(b, rowvar=False)
    ours = frechet_distance(mu1, s1, mu2, s2)
    ref = _scipy_fid(mu1, s1, mu2, s2)
    assert ours == pytest.approx(ref, rel=1e-6)
    assert ours > 1.0


def test_identical_statistics_give_zero(numpy_rng):
    a = _features(numpy_rng, 200, 48)
    mu, s = a.mean(0), np.cov(a, rowvar=False)
    assert abs(frechet_distance(mu, s, mu, s)) < 1e-9 * np.trace(s)
    # a mean shift alone adds exactly its squared norm
    shift = np.full(48, 0.5)
    assert frechet_distance(mu + shift, s, mu, s) == pytest.approx(48 * 0.25, rel=1e-9)


def test_bad_shapes_and_nans_are_rejected():
    with pytest.raises(ValueError, match="shape mismatch"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="sigma2 contains NaN"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.full((2, 2), np.nan))
    with pytest.raises(ValueError, match="expected mu"):
        GaussianStats(np.zeros(3), np.eye(2))


def test_stored_stats_path_agrees_with_torchmetrics(numpy_rng, pixel_metric_factory, tmp_path):
    """Real stats saved to .npz and reloaded + our distance == torchmetrics' own compute on the same features."""
    side = 4
    d = 3 * side * side
    real = torch.from_numpy(numpy_rng.integers(0, 256, size=(300, 3, side, side))).to(torch.uint8)
    fake = torch.from_numpy(numpy_rng.integers(30, 220, size=(250, 3, side, side))).to(torch.uint8)

    metric = pixel_metric_factory(side)
    for chunk in real.split(64):
        metric.update(chunk, real=True)
    for chunk in fake.split(50):
        metric.update(chunk, real=False)
    expected = float(metric.compute())

    real_feats = real.reshape(len(real), d).double().numpy()
    stored = ReferenceStats(
        real_feats.mean(0), np.cov(real_feats, rowvar=False), count=len(real), source="test"
    )
    loaded = load_reference_stats(stored.save(tmp_path / "ref.npz"))
    fake_stats = stats_from_metric(metric, real=False)
    ours = frechet_distance(fake_stats.mu, fake_stats.sigma, loaded.mu, loaded.sigma)
    assert ours == pytest.approx(expected, rel=1e-6)
    assert fake_stats.count == 250
    # and the metric's real-side statistics are the NumPy ones
    real_stats = stats_from_metric(metric, real=True)
    np.testing.assert_allclose(real_stats.mu, stored.mu, rtol=1e-12)
    np.testing.assert_allclose(real_stats.sigma, stored.sigma, rtol=1e-9, atol=1e-9)


def test_stats_from_metric_needs_two_images(pixel_metric_factory):
    metric = pixel_metric_factory(2)
    metric.update(torch.zeros(1, 3, 2, 2, dtype=torch.uint8), real=False)
    with pytest.raises(ValueError, match="at least 2 fake images"):
        stats_from_metric(metric)
