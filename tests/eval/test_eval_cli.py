"""``dimlab fid`` end to end: ref-stats, scoring stored images, scoring a tiny trained checkpoint's samples."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from dimlab.commands.fid import main
from dimlab.eval.ref_stats import load_reference_stats


@pytest.fixture
def image_npzs(tmp_path, small_images):
    same = tmp_path / "same.npz"
    np.savez(same, small_images.permute(0, 2, 3, 1).numpy())
    other = tmp_path / "other.npz"
    np.savez(other, (255 - small_images).permute(0, 2, 3, 1).numpy())
    return same, other


def _ref_stats(tmp_path, source, weights, extra=()):
    out = tmp_path / "ref.npz"
    argv = ["ref-stats", str(source), str(out), "--feature-dim", "64", "--inception-weights", str(weights)]
    assert main([*argv, "--no-progress", *extra]) == 0
    return out


def test_ref_stats_then_score_images(tmp_path, image_npzs, random_inception_weights, capsys):
    same, other = image_npzs
    ref = _ref_stats(tmp_path, same, random_inception_weights)
    stats = load_reference_stats(ref)
    assert stats.count == 8 and stats.mu.shape == (64,) and "same.npz" in stats.source
    assert main(["ref-stats", str(same), str(ref), "--inception-weights", str(random_inception_weights)]) == 2
    assert "--overwrite" in capsys.readouterr().err

    common = ["--ref", str(ref), "--feature-dim", "64", "--inception-weights", str(random_inception_weights)]
    common += ["--no-progress", "--accelerator", "cpu", "--batch-size", "3"]
    assert main(["--images", str(same), "--out", str(tmp_path / "same.json"), *common]) == 0
    assert main(["--images", str(other), "--out", str(tmp_path / "other.json"), *common]) == 0
    same_report = json.loads((tmp_path / "same.json").read_text())
    other_report = json.loads((tmp_path / "other.json").read_text())
    assert abs(same_report["fid"]) < 1e-4 * np.trace(stats.sigma)
    assert other_report["fid"] > 1e-2 * np.trace(stats.sigma)
    assert same_report["num_samples"] == 8 and same_report["source"]["kind"] == "images"
    inc = same_report["inception_weights"]
    assert inc["feature_dim"] == 64 and inc["official"] is False and len(inc["sha256"]) == 64
    assert same_report["reference"]["count"] == 8
    assert "FID" in capsys.readouterr().out, "the final table is printed"

    bad = main(["--images", str(same), *common[:2], "--inception-weights", str(random_inception_weights)])
    assert bad == 2 and "--feature-dim" in capsys.readouterr().err, "2048-d default vs 64-d statistics"


def _tiny_checkpoint(tmp_path):
    from dimlab.lit.module import DiffusionModule
    from tiny_models import tiny_trainer, tiny_uvit

    g = torch.Generator().manual_seed(0)
    data = [{"x": torch.rand(1, 8, 8, generator=g) * 2 - 1, "y": torch.tensor(i % 4)} for i in range(8)]
    module = DiffusionModule(tiny_uvit(num_classes=4), schedule="vp_sde", warmup_steps=0, ema_decay=0.9)
    trainer = tiny_trainer(tmp_path, max_steps=1)
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=4))
    path = tmp_path / "tiny.ckpt"
    trainer.save_checkpoint(path)
    return path


def test_score_a_checkpoint(tmp_path, random_inception_weights):
    from dimlab.data.transforms import to_uint8
    from dimlab.eval.split import official_labels, sample_seeds
    from dimlab.sampling.sampler import load_sampler

    ckpt = _tiny_checkpoint(tmp_path)
    grey = np.random.default_rng(0).integers(0, 256, size=(6, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "real.npz", grey)
    ref = _ref_stats(tmp_path, tmp_path / "real.npz", random_inception_weights)
    out, pngs = tmp_path / "fid.json", tmp_path / "pngs"
    argv = [
        "--ckpt",
        str(ckpt),
        "--num-samples",
        "6",
        "--ref",
        str(ref),
        "--steps",
        "3",
        "--cfg-scale",
        "0.4",
    ]
    argv += [
        "--batch-size",
        "4",
        "--seed",
        "5",
        "--feature-dim",
        "64",
        "--accelerator",
        "cpu",
        "--no-progress",
    ]
    argv += [
        "--inception-weights",
        str(random_inception_weights),
        "--out",
        str(out),
        "--save-images",
        str(pngs),
    ]
    assert main(argv) == 0
    report = json.loads(out.read_text())
    assert np.isfinite(report["fid"]) and report["fid"] > 0
    assert report["source"] == {"kind": "checkpoint", "path": str(ckpt), "ema": True}
    s = report["sampling"]
    assert (s["sampler"], s["steps"], s["cfg_scale"], s["base_seed"]) == ("dpm++", 3, 0.4, 5)
    assert s["label_mode"] == "uniform" and s["num_classes"] == 4 and "w = 1 + s" in s["cfg_convention"]

    # the saved images are exactly what the sampler draws for (seed, label) of each global index
    files = sorted(pngs.glob("*.png"))
    assert [f.name for f in files] == [f"{i:06d}.png" for i in range(6)]
    sampler = load_sampler(ckpt)
    labels = official_labels(6, 4, seed=5)
    for i in (0, 5):
        img = sampler.sample(labels[i : i + 1], sample_seeds(5, [i]), cfg_scale=0.4, sampler="dpm++", steps=3)
        expected = to_uint8(img)[0, 0].numpy()
        saved = np.asarray(Image.open(files[i]))
        assert np.array_equal(saved[..., 0], expected) and np.array_equal(saved[..., 2], expected)


def test_bad_arguments_are_reported(tmp_path, capsys, random_inception_weights):
    ref = tmp_path / "ref.npz"
    np.savez(ref, mu=np.zeros(64), sigma=np.eye(64))
    w = ["--inception-weights", str(random_inception_weights)]
    assert main(["--ckpt", str(tmp_path / "x.ckpt"), "--ref", str(ref), *w]) == 2
    assert "--num-samples" in capsys.readouterr().err
    assert main(["--ckpt", str(tmp_path / "x.ckpt"), "--num-samples", "4", "--ref", str(ref), *w]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    assert main(["--images", str(tmp_path), "--ref", str(tmp_path / "nope.npz"), *w]) == 2
    assert "nope.npz" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--ref", str(ref)])  # neither --ckpt nor --images: argparse usage error


def test_dimlab_sample_and_dimlab_fid_draw_the_same_first_images(tmp_path, random_inception_weights):
    """One seed rule: the same checkpoint and --seed give the same images (and random labels) in both commands."""
    from dimlab.commands.main import main as dimlab
    from dimlab.eval.split import official_labels

    ckpt = _tiny_checkpoint(tmp_path)
    np.savez(tmp_path / "real.npz", np.random.default_rng(0).integers(0, 256, size=(6, 8, 8), dtype=np.uint8))
    ref = _ref_stats(tmp_path, tmp_path / "real.npz", random_inception_weights)
    common = ["--ckpt", str(ckpt), "--seed", "7", "--steps", "3", "--cfg-scale", "0.4", "--batch-size", "2"]
    fid_pngs, sample_dir = tmp_path / "fid_pngs", tmp_path / "sample"
    fid_argv = ["fid", *common, "--num-samples", "4", "--ref", str(ref), "--feature-dim", "64"]
    fid_argv += [
        "--inception-weights",
        str(random_inception_weights),
        "--accelerator",
        "cpu",
        "--no-progress",
    ]
    assert dimlab([*fid_argv, "--save-images", str(fid_pngs)]) == 0
    assert dimlab(["sample", *common, "--num", "3", "--out", str(sample_dir), "--device", "cpu"]) == 0

    recorded = json.loads((sample_dir / "sample_args.json").read_text())
    assert recorded["labels"] == official_labels(3, 4, seed=7).tolist()
    for i in range(3):
        from_fid = np.asarray(Image.open(fid_pngs / f"{i:06d}.png"))
        from_sample = np.asarray(Image.open(sample_dir / f"{i:06d}.png"))
        assert from_fid.shape == (8, 8, 3) and from_sample.shape == (8, 8)
        assert np.array_equal(from_fid[..., 0], from_sample), (
            f"image {i} differs between dimlab fid and sample"
        )


def _two_split_shards(folder, small_images):
    """A shard folder as `dimlab shards` writes it: 6 train and 2 val images (3 per shard), with manifest.json."""
    from dimlab.data.array_source import write_array_shards

    hwc = small_images.permute(0, 2, 3, 1).numpy()
    splits = {"train": (hwc[:6], np.arange(6) % 2), "val": (hwc[6:], np.arange(2) % 2)}
    write_array_shards(
        folder, splits, source="test", source_id="two-splits", class_names=["a", "b"], shard_size=3
    )
    return folder


def test_ref_stats_of_a_shard_folder_use_its_train_split(
    tmp_path, small_images, random_inception_weights, capsys
):
    folder = _two_split_shards(tmp_path / "shards", small_images)
    capsys.readouterr()
    ref = _ref_stats(tmp_path, folder, random_inception_weights)
    stats = load_reference_stats(ref)
    assert stats.count == 6, "only the train split (3 + 3 images), not train + val"
    assert "train" in stats.source
    out = " ".join(capsys.readouterr().out.split())
    assert "split 'train'" in out and "6 images" in out, out

    np.savez(tmp_path / "train.npz", small_images[:6].permute(0, 2, 3, 1).numpy())
    direct = load_reference_stats(
        _ref_stats(tmp_path / "direct", tmp_path / "train.npz", random_inception_weights)
    )
    np.testing.assert_allclose(stats.mu, direct.mu, rtol=1e-5, atol=1e-7)

    val = load_reference_stats(
        _ref_stats(tmp_path / "val", folder, random_inception_weights, ["--split", "val"])
    )
    assert val.count == 2 and "val" in val.source


def test_ref_stats_refuse_an_unknown_split_or_a_folder_of_mixed_splits(
    tmp_path, small_images, random_inception_weights, capsys
):
    folder = _two_split_shards(tmp_path / "shards", small_images)
    w = ["--inception-weights", str(random_inception_weights), "--feature-dim", "64", "--no-progress"]
    assert main(["ref-stats", str(folder), str(tmp_path / "a.npz"), "--split", "test", *w]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "'test'" in err and "train" in err and "val" in err, err

    bare = (
        tmp_path / "bare"
    )  # the same tars without their manifest: the file names still tell the splits apart
    bare.mkdir()
    for tar in folder.glob("*.tar"):
        (bare / tar.name).write_bytes(tar.read_bytes())
    assert main(["ref-stats", str(bare), str(tmp_path / "b.npz"), *w]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "--split" in err and "train" in err and "val" in err, err
    assert main(["ref-stats", str(bare), str(tmp_path / "c.npz"), "--split", "val", *w]) == 0
    assert load_reference_stats(tmp_path / "c.npz").count == 2

    np.savez(tmp_path / "x.npz", small_images.permute(0, 2, 3, 1).numpy())
    assert main(["ref-stats", str(tmp_path / "x.npz"), str(tmp_path / "d.npz"), "--split", "val", *w]) == 2
    assert "--split" in capsys.readouterr().err


def test_ref_stats_progress_knows_its_total(tmp_path, small_images, random_inception_weights, capsys):
    folder = _two_split_shards(tmp_path / "shards", small_images)
    capsys.readouterr()
    argv = ["ref-stats", str(folder), str(tmp_path / "ref.npz"), "--feature-dim", "64", "--batch-size", "4"]
    assert main([*argv, "--inception-weights", str(random_inception_weights)]) == 0
    captured = capsys.readouterr()
    assert "6/6" in captured.out + captured.err, "the bar counts images against the manifest's total (ETA)"
