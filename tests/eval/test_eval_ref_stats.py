"""Reference statistics: .npz cache round trip, pytorch-fid files, computing them from WebDataset shards."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dimlab.eval.fid import frechet_distance
from dimlab.eval.ref_stats import (
    ReferenceStats,
    center_crop_resize,
    compute_reference_stats,
    expand_shards,
    find_reference_shards,
    iter_shard_images,
    load_reference_stats,
)


def _write_shards(folder, images, per_shard=3, key="png", sizes=None):
    """WebDataset tars with an encoded image and a class label per sample (the dimlab shard layout)."""
    import webdataset as wds

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for s in range(0, len(images), per_shard):
        path = folder / f"ref-{s // per_shard:06d}.tar"
        with wds.TarWriter(str(path)) as sink:
            for i in range(s, min(s + per_shard, len(images))):
                buf = io.BytesIO()
                Image.fromarray(images[i]).save(buf, format="PNG")
                sink.write({"__key__": f"{i:06d}", key: buf.getvalue(), "cls": str(i % 3).encode()})
        paths.append(path)
    return paths


@pytest.fixture
def hwc_images(small_images):
    return small_images.permute(0, 2, 3, 1).numpy()


def test_cache_round_trip(tmp_path, numpy_rng):
    a = numpy_rng.normal(size=(50, 6))
    stats = ReferenceStats(a.mean(0), np.cov(a, rowvar=False), count=50, resolution=32, source="somewhere")
    loaded = load_reference_stats(stats.save(tmp_path / "sub" / "stats.npz"))
    assert loaded.count == 50 and loaded.resolution == 32 and loaded.source == "somewhere"
    np.testing.assert_array_equal(loaded.mu, stats.mu)
    np.testing.assert_array_equal(loaded.sigma, stats.sigma)
    assert not list((tmp_path / "sub").glob("*.tmp*")), "no temporary file left behind"


def test_pytorch_fid_style_file_loads(tmp_path, numpy_rng):
    """U-ViT's fid_stats_*.npz hold only float mu and sigma."""
    a = numpy_rng.normal(size=(40, 5))
    path = tmp_path / "fid_stats_cifar10_train_pytorch.npz"
    np.savez(path, mu=a.mean(0).astype(np.float32), sigma=np.cov(a, rowvar=False).astype(np.float32))
    stats = load_reference_stats(path)
    assert stats.count is None and stats.resolution is None and stats.source == str(path)
    assert stats.mu.dtype == np.float64 and stats.sigma.shape == (5, 5)
    assert frechet_distance(stats.mu, stats.sigma, a.mean(0), np.cov(a, rowvar=False)) == pytest.approx(
        0, abs=1e-5
    )


def test_bad_stat_files_name_the_problem(tmp_path):
    adm = tmp_path / "VIRTUAL_imagenet256_labeled.npz"
    np.savez(adm, np.zeros((2, 4, 4, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="expected keys 'mu' and 'sigma'.*--images"):
        load_reference_stats(adm)
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, mu=np.zeros(3), sigma=np.eye(4))
    with pytest.raises(ValueError, match="wrong.npz"):
        load_reference_stats(wrong)
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        load_reference_stats(tmp_path / "missing.npz")


def test_shard_expansion(tmp_path, hwc_images):
    paths = _write_shards(tmp_path / "shards", hwc_images)
    as_str = [str(p) for p in paths]
    assert expand_shards(tmp_path / "shards") == as_str
    assert expand_shards(str(tmp_path / "shards" / "ref-*.tar")) == as_str
    assert expand_shards(str(tmp_path / "shards" / "ref-{000000..000002}.tar")) == as_str
    with pytest.raises(FileNotFoundError, match="do not exist"):
        expand_shards(str(tmp_path / "shards" / "ref-{000000..000009}.tar"))
    with pytest.raises(FileNotFoundError, match="no shards"):
        expand_shards(str(tmp_path / "empty-*.tar"))


def test_shard_images_decode_exactly_and_in_order(tmp_path, hwc_images):
    _write_shards(tmp_path / "shards", hwc_images)
    batches = list(iter_shard_images(tmp_path / "shards", batch_size=5))
    assert [len(b) for b in batches] == [5, 3]
    got = torch.cat(batches)
    assert got.dtype == torch.uint8
    assert torch.equal(got, torch.from_numpy(hwc_images).permute(0, 3, 1, 2))


def test_stats_from_shards_equal_stats_from_the_images(tmp_path, hwc_images, small_images, inception64):
    _write_shards(tmp_path / "shards", hwc_images)
    from_shards = compute_reference_stats(
        iter_shard_images(tmp_path / "shards", batch_size=4),
        metric=inception64,
        source="shards",
        resolution=32,
    )
    direct = compute_reference_stats([small_images[:5], small_images[5:]], metric=inception64)
    assert from_shards.count == 8 and from_shards.resolution == 32
    np.testing.assert_allclose(from_shards.mu, direct.mu, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(from_shards.sigma, direct.sigma, rtol=1e-4, atol=1e-9)
    assert frechet_distance(from_shards.mu, from_shards.sigma, direct.mu, direct.sigma) < 1e-6 * np.trace(
        direct.sigma
    )


def test_shards_without_images_or_mixed_sizes_fail_clearly(tmp_path, hwc_images):
    import webdataset as wds

    path = tmp_path / "latents.tar"
    with wds.TarWriter(str(path)) as sink:
        sink.write({"__key__": "000000", "npy": np.zeros((4, 2, 2), dtype=np.float32), "cls": b"1"})
    with pytest.raises(ValueError, match="has no image"):
        list(iter_shard_images(str(path)))
    mixed = [hwc_images[0], hwc_images[1][:20]]
    _write_shards(tmp_path / "mixed", mixed, key="png")
    with pytest.raises(ValueError, match="different sizes.*--resolution"):
        list(iter_shard_images(tmp_path / "mixed", batch_size=2))
    resized = torch.cat(list(iter_shard_images(tmp_path / "mixed", resolution=16, batch_size=2)))
    assert resized.shape == (2, 3, 16, 16)


def test_center_crop_resize_adm_style():
    wide = Image.fromarray(np.tile(np.arange(200, dtype=np.uint8)[None, :, None], (90, 1, 3)))
    out = center_crop_resize(wide, 32)
    assert out.size == (32, 32)
    row = np.asarray(out)[16, :, 0].astype(int)
    assert abs(row.mean() - 100) < 3, "the crop is centred"
    assert np.all(np.diff(row) >= 0), "left-to-right gradient preserved"


def test_compute_rejects_float_or_wrong_size(inception64):
    with pytest.raises(ValueError, match="uint8"):
        compute_reference_stats([torch.rand(2, 3, 8, 8)], metric=inception64)
    with pytest.raises(ValueError, match="expected 16x16"):
        compute_reference_stats(
            [torch.zeros(2, 3, 8, 8, dtype=torch.uint8)], metric=inception64, resolution=16
        )
    with pytest.raises(ValueError, match="at least 2"):
        compute_reference_stats([torch.zeros(1, 3, 8, 8, dtype=torch.uint8)], metric=inception64)


def test_a_shard_folder_with_a_manifest_gives_one_split(tmp_path, hwc_images):
    """`dimlab shards` folders hold train and val shards side by side: statistics use one split, train by default."""
    from dimlab.data.array_source import write_array_shards

    folder = tmp_path / "shards"
    splits = {"train": (hwc_images[:5], np.zeros(5)), "val": (hwc_images[5:], np.zeros(3))}
    write_array_shards(folder, splits, source="t", source_id="t", class_names=["a"], shard_size=2)
    train = find_reference_shards(folder)
    assert train.split == "train" and train.num_images == 5
    assert [Path(u).name for u in train.urls] == ["train-000000.tar", "train-000001.tar", "train-000002.tar"]
    assert expand_shards(folder) == train.urls
    assert find_reference_shards(folder, split="val").num_images == 3
    assert torch.cat(list(iter_shard_images(folder, split="val"))).shape[0] == 3
    pattern = find_reference_shards(str(folder / "val-*.tar"))
    assert pattern.split is None and pattern.num_images == 3, "a pattern inside the folder is counted too"
    with pytest.raises(ValueError, match="no split 'test'.*'train', 'val'"):
        find_reference_shards(folder, split="test")
