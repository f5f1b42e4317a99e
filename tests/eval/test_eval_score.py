"""generate_and_score / score_images: bookkeeping, batch- and world-size independence (real gloo ranks)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from torchmetrics.image.fid import FrechetInceptionDistance

from dimlab.eval.fid import frechet_distance
from dimlab.eval.images import NpzImageSource
from dimlab.eval.ref_stats import ReferenceStats, compute_reference_stats
from dimlab.eval.score import generate_and_score, score_images
from dimlab.eval.split import official_labels

SIDE = 4
NUM = 21


class PixelFeatures(torch.nn.Module):
    """Flattened pixels as features (kept here so spawned ranks can unpickle it)."""

    num_features = 3 * SIDE * SIDE

    def forward(self, x):
        return x.reshape(x.shape[0], -1).double()


def pixel_metric():
    return FrechetInceptionDistance(feature=PixelFeatures())


def seeded_sample_fn(indices, labels, seeds):
    """Images in [-1, 1] that depend only on each sample's seed and label, like the real sampler."""
    images = []
    for seed, label in zip(seeds, labels.tolist(), strict=True):
        g = torch.Generator().manual_seed(seed)
        images.append(torch.rand(3, SIDE, SIDE, generator=g) * 1.6 - 0.8 + 0.05 * label)
    return torch.stack(images)


def reference_stats(seed: int = 99) -> ReferenceStats:
    rng = np.random.default_rng(seed)
    real = rng.integers(0, 256, size=(200, 3 * SIDE * SIDE)).astype(np.float64)
    return ReferenceStats(real.mean(0), np.cov(real, rowvar=False), count=200)


def _rank_worker(rank, world, init_file, out_dir):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        result = generate_and_score(
            seeded_sample_fn,
            NUM,
            4,
            reference_stats(),
            rank,
            world,
            labels=official_labels(NUM, 10, seed=3),
            base_seed=11,
            metric=pixel_metric(),
        )
        (out_dir / f"rank{rank}.json").write_text(json.dumps({"fid": result.fid, "n": result.num_samples}))
    finally:
        dist.destroy_process_group()


def _single(batch_size: int, on_batch=None):
    return generate_and_score(
        seeded_sample_fn,
        NUM,
        batch_size,
        reference_stats(),
        labels=official_labels(NUM, 10, seed=3),
        base_seed=11,
        metric=pixel_metric(),
        on_batch=on_batch,
    )


def test_fid_is_the_distance_of_the_generated_images():
    seen = {}
    result = _single(5, on_batch=lambda idx, u8: seen.update(zip(idx.tolist(), u8, strict=True)))
    assert sorted(seen) == list(range(NUM)) and result.num_samples == NUM
    images = torch.stack([seen[i] for i in range(NUM)])
    assert images.dtype == torch.uint8
    feats = images.reshape(NUM, -1).double().numpy()
    ref = reference_stats()
    expected = frechet_distance(feats.mean(0), np.cov(feats, rowvar=False), ref.mu, ref.sigma)
    # torchmetrics' one-pass (sum, sum of outer products) covariance vs NumPy's two-pass one
    assert result.fid == pytest.approx(expected, rel=1e-6)
    np.testing.assert_allclose(result.stats.mu, feats.mean(0), rtol=1e-12)


def test_batch_size_does_not_change_the_result():
    fids = {bs: _single(bs).fid for bs in (1, 4, 21, 64)}
    assert max(fids.values()) - min(fids.values()) <= 1e-9 * max(fids.values()), fids


@pytest.mark.parametrize("world", [2, 3])
def test_gloo_ranks_give_the_single_process_fid(tmp_path, world):
    single = _single(4).fid
    # fork: the ranks inherit the imported modules (spawned interpreters take ~20 s each to import torch here)
    mp.start_processes(
        _rank_worker,
        args=(world, str(tmp_path / "pg"), tmp_path),
        nprocs=world,
        join=True,
        start_method="fork",
    )
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(world)]
    assert all(r["n"] == NUM for r in results)
    for r in results:  # every rank returns the gathered FID
        assert r["fid"] == pytest.approx(single, rel=1e-9)


def test_self_fid_is_zero_with_real_inception(small_images, inception64, tmp_path):
    npz = tmp_path / "imgs.npz"
    np.savez(npz, small_images.permute(0, 2, 3, 1).numpy())
    ref = compute_reference_stats([small_images], metric=inception64)
    same = score_images(NpzImageSource(npz), ref, batch_size=3, metric=inception64)
    assert same.num_samples == 8
    assert abs(same.fid) < 1e-4 * np.trace(ref.sigma)
    brighter = tmp_path / "brighter.npz"
    np.savez(brighter, (small_images // 2 + 100).permute(0, 2, 3, 1).numpy())
    other = score_images(NpzImageSource(brighter), ref, batch_size=4, metric=inception64)
    assert other.fid > 100 * abs(same.fid) + 1e-3 * np.trace(ref.sigma)


def test_input_checks():
    ref = reference_stats()
    with pytest.raises(ValueError, match="labels must hold one label per sample"):
        generate_and_score(
            seeded_sample_fn, 5, 2, ref, labels=torch.zeros(4, dtype=torch.long), metric=pixel_metric()
        )
    with pytest.raises(ValueError, match="sample_fn must return"):
        generate_and_score(lambda i, y, s: torch.zeros(len(i), 3, SIDE), 4, 2, ref, metric=pixel_metric())
    with pytest.raises(ValueError, match="float images"):
        generate_and_score(
            lambda i, y, s: torch.zeros(len(i), 3, SIDE, SIDE, dtype=torch.uint8),
            4,
            2,
            ref,
            metric=pixel_metric(),
        )
    with pytest.raises(RuntimeError, match="not initialised"):
        generate_and_score(seeded_sample_fn, 4, 2, ref, rank=0, world_size=2, metric=pixel_metric())
    with pytest.raises(ValueError, match="does not match the reference"):
        generate_and_score(
            seeded_sample_fn,
            4,
            2,
            ReferenceStats(np.zeros(5), np.eye(5)),
            labels=torch.zeros(4, dtype=torch.long),
            metric=pixel_metric(),
        )


def test_unconditional_sample_fn_gets_no_labels():
    got = []

    def sample_fn(indices, labels, seeds):
        got.append(labels)
        return seeded_sample_fn(indices, torch.zeros(len(indices), dtype=torch.long), seeds)

    generate_and_score(sample_fn, 6, 4, reference_stats(), metric=pixel_metric())
    assert got == [None, None]
