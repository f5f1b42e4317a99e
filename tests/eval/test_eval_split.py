"""Rank split, per-sample seeds and label draws: the union of work is identical for any world size."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dimlab.eval.split import official_labels, rank_slice, sample_seeds


@pytest.mark.parametrize("num_samples", [0, 1, 7, 10, 50_000])
def test_rank_slices_cover_every_index_once(num_samples):
    for world in range(1, 5):
        slices = [rank_slice(num_samples, r, world) for r in range(world)]
        flat = [i for s in slices for i in s]
        assert flat == list(range(num_samples)), f"world {world}"
        sizes = [len(s) for s in slices]
        assert max(sizes) - min(sizes) <= 1


def test_rank_slice_rejects_bad_arguments():
    with pytest.raises(ValueError, match="rank"):
        rank_slice(10, 2, 2)
    with pytest.raises(ValueError, match="world_size"):
        rank_slice(10, 0, 0)
    with pytest.raises(ValueError, match="num_samples"):
        rank_slice(-1, 0, 1)


def _assignments(num, world, base_seed, labels):
    """(global index, seed, label) triples that ranks of a world would generate."""
    out = []
    for r in range(world):
        idx = torch.tensor(list(rank_slice(num, r, world)), dtype=torch.long)
        out += list(zip(idx.tolist(), sample_seeds(base_seed, idx), labels[idx].tolist(), strict=True))
    return out


def test_same_seeds_and_labels_for_world_sizes_1_to_4():
    num = 23
    labels = official_labels(num, 10, seed=5)
    reference = _assignments(num, 1, 7, labels)
    for world in (2, 3, 4):
        assert _assignments(num, world, 7, labels) == reference
    seeds = [s for _, s, _ in reference]
    assert len(set(seeds)) == num, "every sample gets its own seed"
    assert all(0 <= s < 2**63 for s in seeds)


def test_seeds_depend_on_base_seed_and_index_only():
    a = sample_seeds(3, [0, 1, 2, 100])
    assert a == sample_seeds(3, torch.tensor([0, 1, 2, 100]))
    assert a[3] == sample_seeds(3, [100])[0]
    b = sample_seeds(4, [0, 1, 2, 100])
    assert not set(a) & set(b), "neighbouring base seeds share no sample seeds"
    with pytest.raises(ValueError):
        sample_seeds(-1, [0])
    with pytest.raises(ValueError):
        sample_seeds(0, [-2])


def test_uniform_labels_reproducible_and_in_range():
    a = official_labels(5000, 1000, seed=1234)
    assert a.dtype == torch.long and a.shape == (5000,)
    assert int(a.min()) >= 0 and int(a.max()) < 1000
    assert torch.equal(a, official_labels(5000, 1000, seed=1234))
    assert not torch.equal(a, official_labels(5000, 1000, seed=1235))
    g = torch.Generator().manual_seed(1234)
    assert torch.equal(a, torch.randint(0, 1000, (5000,), generator=g)), "the official draw: one randint call"


def test_class_frequency_labels_follow_counts():
    counts = np.array([0, 100, 300, 600])
    labels = official_labels(20_000, 4, seed=0, mode="class_frequency", class_counts=counts)
    freq = torch.bincount(labels, minlength=4).double() / len(labels)
    assert freq[0] == 0, "a class without training images is never drawn"
    assert torch.allclose(freq[1:], torch.tensor([0.1, 0.3, 0.6], dtype=torch.float64), atol=0.015)
    g = torch.Generator().manual_seed(0)
    expected = torch.multinomial(
        torch.tensor(counts / counts.sum(), dtype=torch.float32), 20_000, True, generator=g
    )
    assert torch.equal(labels, expected), "the official draw: one multinomial over float32 frequencies"


def test_label_errors_name_the_problem():
    with pytest.raises(ValueError, match="class_counts"):
        official_labels(4, 3, 0, mode="class_frequency")
    with pytest.raises(ValueError, match="expected num_classes=3"):
        official_labels(4, 3, 0, mode="class_frequency", class_counts=[1, 2])
    with pytest.raises(ValueError, match="label mode"):
        official_labels(4, 3, 0, mode="zipf")
    with pytest.raises(ValueError, match="only used"):
        official_labels(4, 3, 0, mode="uniform", class_counts=[1, 1, 1])
