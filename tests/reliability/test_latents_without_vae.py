"""Training on latent shards needs no VAE; a callback that decodes still asks for it before the first step."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from dimlab.data.datamodule import ShardDataModule
from dimlab.lit.callbacks import SampleGrid
from dimlab.lit.module import DiffusionModule
from tiny_models import tiny_dim, tiny_trainer

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from bench_loader import write_latent_shards  # noqa: E402 - the synthetic latent-shard writer


@pytest.fixture(scope="module")
def latent_shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("latents")
    write_latent_shards(out, count=8, shard_size=4)  # 8 x 32 x 32 moments: 256 px
    return out


def _fit(latent_shards, tmp_path, callbacks):
    module = DiffusionModule(
        tiny_dim(input_size=32, in_channels=4, num_classes=1000),
        schedule="sd_discrete",
        vae_path=str(tmp_path / "no-vae-here"),
    )
    data = ShardDataModule(
        str(latent_shards), resolution=256, num_classes=1000, kind="latents", batch_size=4, num_workers=0
    )
    trainer = tiny_trainer(tmp_path, max_steps=2, callbacks=callbacks)
    trainer.fit(module, datamodule=data)
    return trainer


def test_latent_shards_train_without_the_vae_folder(latent_shards, tmp_path):
    assert _fit(latent_shards, tmp_path, callbacks=[]).global_step == 2


def test_sample_grid_on_latents_asks_for_the_vae_before_training(latent_shards, tmp_path):
    missing = tmp_path / "no-vae-here"
    with pytest.raises(FileNotFoundError, match=f"VAE folder {missing} not found"):
        _fit(latent_shards, tmp_path, callbacks=[SampleGrid(every_n_steps=1, per_class=1, max_classes=1)])
