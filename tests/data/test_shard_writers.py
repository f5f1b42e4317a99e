"""Shard writers: CIFAR-10 and digits contents, manifests, resume after interruption, CLI errors."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import webdataset as wds

from dimlab.commands.shards import main
from dimlab.data.manifest import read_manifest, sha256_file
from dimlab.data.transforms import decode_image


def _read_all(paths):
    samples = {}
    for path in paths:
        for sample in wds.DataPipeline(wds.SimpleShardList([str(path)]), wds.tarfile_to_samples()):
            samples[sample["__key__"]] = sample
    return samples


def test_cifar10_shards_hold_the_archive_pixels_and_labels(tmp_path, fake_cifar):
    archive, expected = fake_cifar
    out = tmp_path / "cifar"
    assert main(["cifar10", str(out), "--archive", str(archive), "--shard-size", "7", "--workers", "2"]) == 0
    manifest = read_manifest(out)
    assert manifest["kind"] == "images" and manifest["resolution"] == 32 and manifest["channels"] == 3
    assert manifest["class_names"][3] == "class3"
    for split, (images, labels) in expected.items():
        summary = manifest["splits"][split]
        assert summary["samples"] == len(images)
        assert [s["name"] for s in summary["shards"]] == [
            f"{split}-{i:06d}.tar" for i in range(-(-len(images) // 7))
        ]
        counts = {str(c): int(n) for c, n in zip(*np.unique(labels, return_counts=True), strict=True)}
        assert summary["per_class"] == counts
        for shard in summary["shards"]:
            assert sha256_file(out / shard["name"]) == shard["sha256"]
        samples = _read_all(out / s["name"] for s in summary["shards"])
        for index, (image, label) in enumerate(zip(images, labels, strict=True)):
            sample = samples[f"{split}_{index:08d}"]
            assert np.array_equal(decode_image(sample["png"], 3), image)
            assert int(sample["cls"]) == label


def test_cifar10_archive_errors_name_the_file(tmp_path):
    bad = tmp_path / "cifar-10-python.tar.gz"
    bad.write_bytes(b"not a tar")
    assert main(["cifar10", str(tmp_path / "out"), "--archive", str(bad)]) == 2
    with pytest.raises(ValueError, match="not a readable tar"):
        from dimlab.data.cifar import read_cifar10_archive

        read_cifar10_archive(bad)


def test_digits_shards_are_split_deterministically(digits_dir, tmp_path):
    manifest = read_manifest(digits_dir)
    assert manifest["channels"] == 1 and manifest["resolution"] == 16 and manifest["num_classes"] == 10
    assert manifest["splits"]["train"]["samples"] == 1617
    assert manifest["splits"]["val"]["samples"] == 180
    assert len(manifest["splits"]["val"]["shards"]) == 5
    sample = next(iter(_read_all([digits_dir / "val-000000.tar"]).values()))
    assert decode_image(sample["png"], 1).shape == (16, 16, 1)
    # same settings, same bytes: a second writer produces identical shards
    again = tmp_path / "again"
    assert main(["digits", str(again), "--shard-size", "40"]) == 0
    for split in ("train", "val"):
        assert [s["sha256"] for s in read_manifest(again)["splits"][split]["shards"]] == [
            s["sha256"] for s in manifest["splits"][split]["shards"]
        ]


def test_interrupted_job_rewrites_only_unfinished_shards(digits_dir, tmp_path):
    out = tmp_path / "resume"
    shutil.copytree(digits_dir, out)
    original = read_manifest(out)
    for shard in out.glob("*.tar"):
        os.utime(shard, ns=(1, 1))  # any rewrite shows as a new mtime
    # simulate a run killed while writing train-000003: shard gone, a temp file half written
    (out / "train-000003.tar").unlink()
    (out / "train-000003.tar.tmp-12345").write_bytes(b"half a shard")
    assert main(["digits", str(out), "--shard-size", "40"]) == 0
    rewritten = {p.name for p in out.glob("*.tar") if p.stat().st_mtime_ns != 1}
    assert rewritten == {"train-000003.tar"}
    assert len(list(out.glob("*.tar"))) == 46
    assert not list(out.glob("*.tmp-*"))
    assert read_manifest(out)["splits"] == original["splits"]


def test_resume_with_other_settings_is_refused(digits_dir, tmp_path):
    out = tmp_path / "other"
    shutil.copytree(digits_dir, out)
    assert main(["digits", str(out), "--shard-size", "50"]) == 2
    plan = json.loads((out / ".progress" / "plan.json").read_text())
    assert plan["fingerprint"]
