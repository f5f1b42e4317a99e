"""Fixtures for the ablation tests: a tiny experiment YAML (a few-thousand-parameter DiM) and a matrix writer."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tiny_models import tiny_dim_args

#: The tiny recipe at 16 px (patch 4: a 4x4 token grid), 10 digit classes, width 16.
TINY_DIM = tiny_dim_args(input_size=16, patch_size=4, hidden_size=16, num_classes=10)


def tiny_experiment(train_shards: str = "unused/train-000000.tar") -> dict:
    """A complete, tiny ``dimlab fit`` config on 16 px 1-channel digits, CPU, a handful of steps."""
    return {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "max_steps": 2,
            "precision": 32,
            "log_every_n_steps": 1,
            "limit_val_batches": 0,
        },
        "checkpoint": {"every_n_train_steps": 1},
        "model": {
            "backbone": {"class_path": "dimlab.models.dim.DiM", "init_args": dict(TINY_DIM)},
            "schedule": "vp_sde",
            "warmup_steps": 1,
        },
        "data": {
            "train_shards": train_shards,
            "kind": "images",
            "resolution": 16,
            "channels": 1,
            "num_classes": 10,
            "batch_size": 8,
            "num_workers": 0,
            "flip": False,
        },
    }


@pytest.fixture
def experiment(tmp_path: Path) -> Path:
    """Path of the tiny experiment YAML (in ``tmp_path/experiments``)."""
    path = tmp_path / "experiments" / "tiny.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(yaml.safe_dump(tiny_experiment()))
    return path


@pytest.fixture
def write_matrix(tmp_path: Path):
    """``write_matrix(dict) -> Path``: write a matrix YAML into ``tmp_path/ablations``."""

    def write(content: dict, name: str = "matrix.yaml") -> Path:
        path = tmp_path / "ablations" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(content, sort_keys=False))
        return path

    return write
