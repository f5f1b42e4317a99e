"""ShardDataModule: values, labels, flips, rank / worker splitting, bad data handling and exact resume."""

from __future__ import annotations

import hashlib
import io
import logging
import shutil
import tarfile

import numpy as np
import pytest
import torch
import webdataset as wds

from dimlab.data.datamodule import ShardDataModule
from dimlab.data.streams import LabelOutOfRange
from dimlab.data.transforms import decode_image


def _digits(digits_dir, **overrides):
    options = dict(resolution=16, num_classes=10, channels=1, batch_size=16, num_workers=0, shuffle_buffer=64)
    options.update(overrides)
    return ShardDataModule(str(digits_dir), val_shards=str(digits_dir), **options)


def _image_bytes(x: torch.Tensor) -> bytes:
    """Exact identity of one image in [-1, 1] (uint8 round trip)."""
    return ((x + 1) * 127.5).round().to(torch.uint8).numpy().tobytes()


def _stored_images(paths):
    """{uint8 bytes of (1, H, W) image: label} for every sample in the shards, read without the DataModule."""
    stored = {}
    for sample in wds.DataPipeline(wds.SimpleShardList([str(p) for p in paths]), wds.tarfile_to_samples()):
        pixels = decode_image(sample["png"], 1).transpose(2, 0, 1)
        stored[pixels.tobytes()] = (int(sample["cls"]), np.ascontiguousarray(pixels[:, :, ::-1]).tobytes())
    return stored


def test_validation_reads_every_sample_once_with_values_and_labels(digits_dir):
    dm = _digits(digits_dir, num_workers=2, val_batch_size=32)
    dm.setup("validate")
    stored = _stored_images(dm.val_set.urls)
    seen = []
    for batch in dm.val_dataloader():
        assert batch["x"].shape[1:] == (1, 16, 16) and batch["x"].dtype == torch.float32
        assert batch["x"].min() >= -1 and batch["x"].max() <= 1 and batch["y"].dtype == torch.long
        for x, y in zip(batch["x"], batch["y"].tolist(), strict=True):
            key = _image_bytes(x)
            assert stored[key][0] == y
            seen.append(key)
    assert sorted(seen) == sorted(stored) and len(seen) == 180


def test_two_ranks_two_workers_split_validation_and_differ_in_training(digits_dir, monkeypatch):
    per_rank_val, per_rank_train = [], []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        dm = _digits(digits_dir, num_workers=2, samples_per_epoch=256)
        dm.setup("fit")
        assert (dm.rank, dm.world_size) == (rank, 2)
        assert len(dm.train_dataloader()) == 8  # 256 / (2 ranks * 16) = 8 batches, a multiple of 2 workers
        per_rank_val.append([_image_bytes(x) for b in dm.val_dataloader() for x in b["x"]])
        per_rank_train.append([_image_bytes(x) for b in dm.train_dataloader() for x in b["x"]])
    stored = _stored_images(dm.val_set.urls)
    assert not set(per_rank_val[0]) & set(per_rank_val[1])
    assert sorted(per_rank_val[0] + per_rank_val[1]) == sorted(stored)
    assert len(per_rank_train[0]) == len(per_rank_train[1]) == 128
    assert per_rank_train[0] != per_rank_train[1]
    overlap = len(set(per_rank_train[0]) & set(per_rank_train[1]))
    assert overlap < 64  # independent resampling, not the same stream


def test_training_flips_and_labels(digits_dir):
    dm = _digits(digits_dir, samples_per_epoch=320, seed=3)
    dm.setup("fit")
    stored = _stored_images(dm.train_set.urls)
    flipped = {mirror: (label, original) for original, (label, mirror) in stored.items()}
    kinds = []
    for batch in dm.train_dataloader():
        for x, y in zip(batch["x"], batch["y"].tolist(), strict=True):
            key = _image_bytes(x)
            if key in stored and key in flipped:  # a mirror-symmetric digit; either reading is right
                continue
            assert key in stored or key in flipped
            kinds.append("plain" if key in stored else "flip")
            assert (stored[key][0] if key in stored else flipped[key][0]) == y
    assert 0.3 < kinds.count("flip") / len(kinds) < 0.7
    no_flip = _digits(digits_dir, samples_per_epoch=160, flip=False)
    no_flip.setup("fit")
    assert all(_image_bytes(x) in stored for b in no_flip.train_dataloader() for x in b["x"])


def test_epochs_differ_and_samples_per_epoch_sets_length(digits_dir):
    dm = _digits(digits_dir, samples_per_epoch=100, num_workers=2)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert len(loader) == 8  # ceil(100 / 16) = 7 batches, rounded up to 2 workers
    first = [b["y"] for b in loader]
    second = [b["y"] for b in loader]
    assert len(first) == len(second) == 8 and dm.state_dict()["epoch"] == 1
    assert not all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_mid_epoch_reproduces_the_stream(digits_dir, num_workers):
    def run(consume=None, state=None):
        dm = _digits(digits_dir, samples_per_epoch=160, num_workers=num_workers, seed=7)
        dm.setup("fit")
        if state is not None:
            dm.load_state_dict(state)
        loader, batches = dm.train_dataloader(), []
        for _ in range(2):  # this epoch (rest) and the next one
            for batch in loader:
                batches.append(
                    hashlib.sha1(batch["x"].numpy().tobytes() + batch["y"].numpy().tobytes()).hexdigest()
                )
                if consume is not None and len(batches) == consume:
                    return batches, dm.state_dict()
        return batches, dm.state_dict()

    full, _ = run()
    assert len(full) == 20
    head, state = run(consume=3)
    assert state["epoch"] == 0 and state["batches_consumed"] == 3
    tail, _ = run(state=state)
    assert head + tail == full
    _, state = run(consume=10)
    assert state["batches_consumed"] == 10
    tail, _ = run(state=state)
    assert tail[:10] == full[10:]  # an end-of-epoch state starts the next epoch


def _rewrite_member(shard, key, extension, data):
    """Copy ``shard`` with one member's bytes replaced (a corrupt tar member)."""
    out = io.BytesIO()
    with tarfile.open(shard) as source, tarfile.open(fileobj=out, mode="w") as target:
        for info in source.getmembers():
            payload = source.extractfile(info).read()
            if info.name == f"{key}.{extension}":
                payload = data
                info.size = len(data)
            target.addfile(info, io.BytesIO(payload))
    shard.write_bytes(out.getvalue())


def test_corrupt_member_is_skipped_counted_and_logged(digits_dir, tmp_path, caplog):
    data = tmp_path / "digits"
    shutil.copytree(digits_dir, data)
    _rewrite_member(data / "val-000001.tar", "val_00000041", "png", b"\x89PNG garbage")
    dm = _digits(data)
    dm.setup("validate")
    with caplog.at_level(logging.WARNING, logger="dimlab.data"):
        total = sum(len(b["y"]) for b in dm.val_dataloader())
    assert total == 179 and dm.skipped_samples == 1
    assert "val-000001.tar" in caplog.text and "val_00000041" in caplog.text
    assert "png: not an image" in caplog.text and "object at 0x" not in caplog.text, caplog.text

    # a truncated shard: the samples before the cut are read, the broken tail is counted
    with open(data / "val-000002.tar", "r+b") as handle:
        handle.truncate(5000)
    dm = _digits(data, num_workers=2)
    dm.setup("validate")
    total = sum(len(b["y"]) for b in dm.val_dataloader())
    assert 140 - 1 < total < 179 and dm.skipped_samples >= 1


def test_label_out_of_range_raises_with_the_key(digits_dir, tmp_path):
    bare = tmp_path / "bare"  # no manifest, so the label check happens while reading
    bare.mkdir()
    shutil.copy(digits_dir / "val-000000.tar", bare)
    dm = ShardDataModule(
        str(bare / "val-000000.tar"),
        resolution=16,
        num_classes=3,
        channels=1,
        batch_size=8,
        num_workers=0,
        samples_per_epoch=16,
    )
    dm.setup("fit")
    with pytest.raises(LabelOutOfRange, match=r"val_\d{8}.*outside \[0, 3\)"):
        list(dm.train_dataloader())


def test_setup_errors_name_the_bad_input(digits_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        ShardDataModule(str(tmp_path / "nowhere-{000..003}.tar"), resolution=16, num_classes=10).setup("fit")
    with pytest.raises(ValueError, match="matched no shards"):
        ShardDataModule(str(tmp_path / "*.tar"), resolution=16, num_classes=10).setup("fit")
    with pytest.raises(ValueError, match="resolution 16 but resolution=32"):
        ShardDataModule(str(digits_dir), resolution=32, num_classes=10, channels=1).setup("fit")
    with pytest.raises(ValueError, match="needs 'latents'"):
        ShardDataModule(str(digits_dir), resolution=16, num_classes=10, channels=1, kind="latents").setup(
            "fit"
        )
    with pytest.raises(ValueError, match="samples_per_epoch"):
        bare = tmp_path / "bare"
        bare.mkdir()
        shutil.copy(digits_dir / "train-000000.tar", bare)
        ShardDataModule(str(bare / "train-000000.tar"), resolution=16, num_classes=10).setup("fit")
    with pytest.raises(ValueError, match="kind='video'"):
        ShardDataModule(str(digits_dir), resolution=16, num_classes=10, kind="video")


def test_datamodule_survives_deepcopy_and_pickle(digits_dir):
    import copy
    import pickle

    dm = _digits(digits_dir, samples_per_epoch=64)
    dm.setup("fit")
    list(dm.train_dataloader())
    for clone in (copy.deepcopy(dm), pickle.loads(pickle.dumps(dm))):
        assert clone.state_dict() == dm.state_dict() and clone.skipped_samples == 0
        assert len(list(clone.train_dataloader())) == 4


def test_cifar_pixels_read_back_in_rgb_chw_order(tmp_path, fake_cifar):
    from dimlab.commands.shards import main

    archive, expected = fake_cifar
    out = tmp_path / "cifar"
    assert main(["cifar10", str(out), "--archive", str(archive), "--shard-size", "4", "--workers", "1"]) == 0
    dm = ShardDataModule(
        str(out),
        val_shards=str(out),
        kind="pixels",
        resolution=32,
        num_classes=10,
        batch_size=4,
        num_workers=2,
        shuffle_buffer=8,
    )
    dm.setup("fit")
    assert dm.val_set.split == "test"  # a directory without a val split validates on test
    images, labels = expected["test"]
    wanted = {
        image.transpose(2, 0, 1).tobytes(): int(label) for image, label in zip(images, labels, strict=True)
    }
    got = {}
    for batch in dm.val_dataloader():
        assert batch["x"].shape[1:] == (3, 32, 32)
        for x, y in zip(batch["x"], batch["y"].tolist(), strict=True):
            got[_image_bytes(x)] = y
    assert got == wanted
    train_images = {image.transpose(2, 0, 1).tobytes() for image in expected["train"][0]}
    train_flipped = {image[:, ::-1].transpose(2, 0, 1).tobytes() for image in expected["train"][0]}
    batch = next(iter(dm.train_dataloader()))
    assert all(_image_bytes(x) in train_images | train_flipped for x in batch["x"])


@pytest.mark.parametrize(
    ("changed", "named"),
    [
        ({"batch_size": 8}, "data.batch_size=8 (checkpoint: 16)"),
        ({"num_workers": 2}, "data.num_workers=2 (checkpoint: 0)"),
        ({"samples_per_epoch": 64}, "data.samples_per_epoch=64 (checkpoint: 128)"),
        ({"seed": 5}, "data.seed=5 (checkpoint: 0)"),
    ],
)
def test_resuming_with_a_changed_stream_option_names_that_option(digits_dir, caplog, changed, named):
    saved = _digits(digits_dir, samples_per_epoch=128)
    saved.setup("fit")
    state = saved.state_dict()
    resumed = _digits(digits_dir, **{"samples_per_epoch": 128, **changed})
    resumed.setup("fit")
    with caplog.at_level(logging.WARNING, logger="dimlab.data"):
        resumed.load_state_dict(state)
    warnings = [r.getMessage() for r in caplog.records if "will not match" in r.getMessage()]
    assert len(warnings) == 1 and named in warnings[0], warnings
    assert "batches_per_epoch" not in warnings[0]
