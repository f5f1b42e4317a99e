"""W&B logging end to end, offline: a LightningCLI run with a WandbLogger, read back from the run file."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from lightning.pytorch.cli import LightningCLI
from torch.utils.data import DataLoader, Dataset

from dimlab.lit.callbacks import SampleGrid
from dimlab.lit.module import DiffusionModule
from dimlab.lit.wandb_config import WandbSaveConfigCallback, find_secret_keys
from dimlab.lit.wandb_offline import read_offline_run, wait_for_offline_run

wandb = pytest.importorskip("wandb")


class _RandomImages(Dataset):
    """Fixed random 1x8x8 images in [-1, 1] with labels 0..9."""

    def __init__(self, n: int = 16):
        g = torch.Generator().manual_seed(0)
        self.x = torch.rand(n, 1, 8, 8, generator=g) * 2 - 1
        self.y = torch.arange(n) % 10

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "y": self.y[i]}


class TinyImageData(L.LightningDataModule):
    """An in-memory DataModule with the batch layout dimlab's shard DataModule produces ({"x", "y"})."""

    def __init__(self, batch_size: int = 4):
        super().__init__()
        self.batch_size = batch_size

    def train_dataloader(self):
        return DataLoader(_RandomImages(), batch_size=self.batch_size, shuffle=False)


CONFIG = """
seed_everything: 0
model:
  backbone:
    class_path: dimlab.models.uvit.UViT
    init_args: {input_size: 8, hidden_size: 32, depth: 3, num_heads: 2, in_channels: 1, num_classes: 10}
  schedule: vp_sde
  warmup_steps: 0
data:
  batch_size: 4
trainer:
  accelerator: cpu
  devices: 1
  max_steps: 4
  log_every_n_steps: 1
  enable_checkpointing: false
  enable_model_summary: false
  enable_progress_bar: false
  default_root_dir: {save_dir}
  logger:
    class_path: lightning.pytorch.loggers.WandbLogger
    init_args:
      project: dimlab-tests
      name: tiny-uvit
      group: ci
      tags: [unit, offline]
      save_dir: {save_dir}
  callbacks:
    - class_path: dimlab.lit.callbacks.SampleGrid
      init_args: {every_n_steps: 2, per_class: 2, max_classes: 2, sampler: dpm++, steps: 3}
"""


@pytest.fixture
def offline_wandb(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    yield
    wandb.finish()


def _write_config(tmp_path: Path, text: str = CONFIG) -> Path:
    cfg = tmp_path / "run.yaml"
    cfg.write_text(text.replace("{save_dir}", str(tmp_path / "logs")))
    return cfg


def _run_cli(cfg: Path, *overrides: str) -> LightningCLI:
    cli = LightningCLI(
        DiffusionModule,
        TinyImageData,
        save_config_callback=WandbSaveConfigCallback,
        args=["fit", "--config", str(cfg), *overrides],
    )
    wandb.finish()
    return cli


def _offline_run_dir(tmp_path: Path) -> Path:
    runs = sorted((tmp_path / "logs" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs
    return runs[0]


def test_offline_run_records_config_loss_and_sample_grid(offline_wandb, tmp_path):
    cli = _run_cli(_write_config(tmp_path))
    assert cli.trainer.global_step == 4
    assert any(isinstance(cb, SampleGrid) for cb in cli.trainer.callbacks)

    run = wait_for_offline_run(_offline_run_dir(tmp_path))
    assert (run.project, run.name, run.group, sorted(run.tags)) == (
        "dimlab-tests",
        "tiny-uvit",
        "ci",
        ["offline", "unit"],
    )

    # The full resolved LightningCLI config, as the same tree as the YAML.
    assert run.config["model"]["backbone"]["class_path"] == "dimlab.models.uvit.UViT"
    assert run.config["model"]["backbone"]["init_args"]["hidden_size"] == 32
    assert run.config["trainer"]["max_steps"] == 4
    assert run.config["trainer"]["logger"]["init_args"]["group"] == "ci"
    assert run.config["data"]["batch_size"] == 4
    assert ("config", f"config-{run.run_id}") in run.artifacts
    assert run.exit_code == 0

    losses = run.metric("train/loss")
    assert len(losses) == 4
    assert all(isinstance(v, float) and v > 0 for v in losses)
    throughput = run.metric("perf/images_per_sec")
    assert throughput and all(v > 0 for v in throughput)

    grids = run.metric("samples/grid")
    assert len(grids) == 2  # steps 2 and 4
    image = grids[-1]
    assert image["_type"] == "images/separated"
    assert image["captions"] and "step 4" in image["captions"][0]
    media = list(_offline_run_dir(tmp_path).glob("files/media/images/samples/grid_*.png"))
    assert len(media) == 2

    # config.yaml is still written locally, next to the logger's files.
    local = yaml.safe_load((tmp_path / "logs" / "config.yaml").read_text())
    assert local["model"]["backbone"]["init_args"]["depth"] == 3


def test_repeat_run_overwrites_config_yaml(offline_wandb, tmp_path):
    cfg = _write_config(tmp_path)
    _run_cli(cfg, "--trainer.max_steps=1", "--trainer.callbacks=[]")
    # The stock callback aborts here because config.yaml exists; ours overwrites it with the new config.
    _run_cli(cfg, "--trainer.max_steps=2", "--trainer.callbacks=[]")
    assert yaml.safe_load((tmp_path / "logs" / "config.yaml").read_text())["trainer"]["max_steps"] == 2


def test_find_secret_keys_names_credential_paths():
    config = {"trainer": {"logger": {"init_args": {"api_key": "abc123"}}}, "model": {"pad_token": 1}}
    assert find_secret_keys(config) == ["trainer.logger.init_args.api_key"]
    assert find_secret_keys({"wandb": {"api_key": None}, "tokens": [{"password": "x"}]}) == [
        "tokens[0].password"
    ]


def test_config_with_a_credential_is_refused_before_upload(offline_wandb, tmp_path):
    leaky = CONFIG.replace(
        "tags: [unit, offline]", "tags: [unit, offline]\n      settings: {api_key: 0123456789abcdef}"
    )
    cfg = _write_config(tmp_path, leaky)
    with pytest.raises(ValueError, match=r"trainer\.logger\.init_args\.settings\.api_key"):
        LightningCLI(
            DiffusionModule,
            TinyImageData,
            save_config_callback=WandbSaveConfigCallback,
            args=["fit", "--config", str(cfg)],
        )
    assert not (tmp_path / "logs").exists()  # refused before the W&B run started


def test_reader_rejects_files_that_are_not_wandb_runs(tmp_path):
    bogus = tmp_path / "run-x.wandb"
    bogus.write_bytes(b"not a wandb file at all")
    with pytest.raises(ValueError, match="not a W&B run file"):
        read_offline_run(bogus)
    # A valid header followed by a record whose checksum is wrong.
    payload = b"\x01\x02"
    bad_crc = (zlib.crc32(payload, zlib.crc32(b"\x01")) + 1) & 0xFFFFFFFF
    corrupt = tmp_path / "run-y.wandb"
    corrupt.write_bytes(
        struct.pack("<4sHB", b":W&B", 0xBEE1, 0) + struct.pack("<IHB", bad_crc, 2, 1) + payload
    )
    with pytest.raises(ValueError, match="checksum"):
        read_offline_run(corrupt)
    empty = tmp_path / "empty_run_dir"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="expected one run-"):
        read_offline_run(empty)
