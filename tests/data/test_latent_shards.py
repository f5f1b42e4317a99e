"""The VAE helpers and latent shards (moments of each image and of its flip) through a tiny random VAE."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
import webdataset as wds

from dimlab.commands.shards import main
from dimlab.data.datamodule import ShardDataModule
from dimlab.data.manifest import read_manifest
from dimlab.data.transforms import decode_image, uint8_to_signed
from dimlab.data.vae import decode_latents, encode_moments, load_vae, sample_from_moments


def test_load_vae_errors_name_the_folder(tmp_path, tiny_vae_dir):
    with pytest.raises(FileNotFoundError, match="missing-vae"):
        load_vae(tmp_path / "missing-vae")
    (tmp_path / "no-config").mkdir()
    with pytest.raises(ValueError, match="no config.json"):
        load_vae(tmp_path / "no-config")
    unet = tmp_path / "unet"
    unet.mkdir()
    (unet / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
    with pytest.raises(ValueError, match="UNet2DModel"):
        load_vae(unet)
    weightless = tmp_path / "weightless"
    weightless.mkdir()
    (weightless / "config.json").write_text((tiny_vae_dir / "config.json").read_text())
    with pytest.raises(ValueError, match="no weights"):
        load_vae(weightless)


def test_moments_sampling_and_decoding(tiny_vae_dir):
    vae = load_vae(tiny_vae_dir)
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    moments = encode_moments(vae, images)
    assert moments.shape == (2, 8, 16, 16)
    assert torch.allclose(moments, vae.encode(images).latent_dist.parameters)
    # sample = scale * (mean + exp(logvar / 2) * noise), with the same noise as a seeded generator draws
    z = sample_from_moments(moments, torch.Generator().manual_seed(3), scale=0.5)
    mean, logvar = moments.chunk(2, dim=1)
    noise = torch.randn(mean.shape, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(z, 0.5 * (mean + torch.exp(0.5 * logvar) * noise), atol=1e-6)
    decoded = decode_latents(vae, z, scale=0.5)
    assert decoded.shape == (2, 3, 32, 32) and decoded.min() >= -1 and decoded.max() <= 1
    assert torch.allclose(decoded, vae.decode(z / 0.5).sample.clamp(-1, 1))
    with pytest.raises(ValueError, match="expected images"):
        encode_moments(vae, torch.zeros(2, 1, 32, 32))


def test_latent_shards_store_image_and_flip_moments(tmp_path, fake_cifar, tiny_vae_dir):
    archive, expected = fake_cifar
    images_dir, latents_dir = tmp_path / "images", tmp_path / "latents"
    assert (
        main(["cifar10", str(images_dir), "--archive", str(archive), "--shard-size", "16", "--workers", "1"])
        == 0
    )
    code = main(
        [
            "latents",
            str(images_dir),
            str(latents_dir),
            "--vae",
            str(tiny_vae_dir),
            "--batch-size",
            "7",
            "--device",
            "cpu",
            "--workers",
            "2",
        ]
    )
    assert code == 0
    manifest = read_manifest(latents_dir)
    assert manifest["kind"] == "latents" and manifest["moments_shape"] == [8, 16, 16]
    assert manifest["splits"]["train"]["samples"] == 30 and manifest["splits"]["test"]["samples"] == 10
    assert [s["name"] for s in manifest["splits"]["train"]["shards"]] == [
        f"train-{i:06d}.tar" for i in range(2)
    ]

    vae = load_vae(tiny_vae_dir)
    shard = str(latents_dir / "test-000000.tar")
    source = {
        s["__key__"]: s
        for s in wds.DataPipeline(
            wds.SimpleShardList([str(images_dir / "test-000000.tar")]), wds.tarfile_to_samples()
        )
    }
    for sample in wds.DataPipeline(wds.SimpleShardList([shard]), wds.tarfile_to_samples()):
        moments = np.load(io.BytesIO(sample["moments.npy"]))
        flipped = np.load(io.BytesIO(sample["moments_flip.npy"]))
        assert moments.dtype == np.float16 and moments.shape == (8, 16, 16)
        pixels = torch.from_numpy(decode_image(source[sample["__key__"]]["png"], 3)).permute(2, 0, 1)[None]
        x = uint8_to_signed(pixels)
        reference = encode_moments(vae, torch.cat([x, x.flip(dims=[3])])).numpy()
        np.testing.assert_allclose(moments.astype(np.float32), reference[0], rtol=2e-3, atol=2e-3)
        np.testing.assert_allclose(flipped.astype(np.float32), reference[1], rtol=2e-3, atol=2e-3)
        assert sample["cls"] == source[sample["__key__"]]["cls"]

    # the DataModule hands out one of the two stored moment arrays per sample
    dm = ShardDataModule(
        str(latents_dir),
        resolution=32,
        num_classes=10,
        val_shards=str(latents_dir),
        kind="latents",
        batch_size=5,
        num_workers=0,
        shuffle_buffer=8,
        seed=1,
    )
    dm.setup("fit")
    stored = {}
    for s in wds.DataPipeline(wds.SimpleShardList(dm.train_set.urls), wds.tarfile_to_samples()):
        stored[int(s["cls"]), "plain"] = stored.get((int(s["cls"]), "plain"), []) + [
            np.load(io.BytesIO(s["moments.npy"]))
        ]
        stored[int(s["cls"]), "flip"] = stored.get((int(s["cls"]), "flip"), []) + [
            np.load(io.BytesIO(s["moments_flip.npy"]))
        ]
    kinds = []
    for batch in dm.train_dataloader():
        assert batch["x"].shape == (5, 8, 16, 16) and batch["x"].dtype == torch.float32
        for x, y in zip(batch["x"].numpy(), batch["y"].tolist(), strict=True):
            found = [
                k
                for k in ("plain", "flip")
                if any(np.array_equal(x, m.astype(np.float32)) for m in stored.get((y, k), []))
            ]
            assert found, "training sample is neither stored moment array of its class"
            kinds.append(found[0])
    assert {"plain", "flip"} <= set(kinds)
    val = [b for b in dm.val_dataloader()]
    assert sum(len(b["y"]) for b in val) == 10


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_latent_shards_on_gpu_match_cpu(tmp_path, fake_cifar, tiny_vae_dir):
    archive, _ = fake_cifar
    images_dir = tmp_path / "images"
    assert main(["cifar10", str(images_dir), "--archive", str(archive), "--workers", "1"]) == 0
    for device in ("cpu", "cuda"):
        args = [
            "latents",
            str(images_dir),
            str(tmp_path / device),
            "--vae",
            str(tiny_vae_dir),
            "--device",
            device,
        ]
        assert main(args) == 0
    for name in ("train-000000.tar", "test-000000.tar"):
        cpu, gpu = (
            list(wds.DataPipeline(wds.SimpleShardList([str(tmp_path / d / name)]), wds.tarfile_to_samples()))
            for d in ("cpu", "cuda")
        )
        for a, b in zip(cpu, gpu, strict=True):
            np.testing.assert_allclose(
                np.load(io.BytesIO(a["moments.npy"])).astype(np.float32),
                np.load(io.BytesIO(b["moments.npy"])).astype(np.float32),
                rtol=1e-2,
                atol=1e-2,
            )


def test_latents_need_a_resolution_the_vae_can_halve(tmp_path, tiny_vae_dir, capsys):
    """Pixel shards take any size; the VAE's latent grid needs a multiple of its downsampling factor (2 here)."""
    from PIL import Image

    src = tmp_path / "src" / "only"
    src.mkdir(parents=True)
    for i in range(2):
        Image.fromarray(np.full((30, 30, 3), 40 * i, dtype=np.uint8)).save(src / f"{i}.png")
    images = tmp_path / "images"
    assert main(["imagefolder", str(src.parent), str(images), "--resolution", "27", "--workers", "1"]) == 0
    assert main(["latents", str(images), str(tmp_path / "latents"), "--vae", str(tiny_vae_dir)]) == 2
    err = " ".join(capsys.readouterr().err.split())  # rich wraps long lines
    assert "resolution 27" in err and "multiple of 2" in err, err
