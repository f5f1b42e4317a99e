"""``python -m dimlab fit`` on tiny digits shards, as a subprocess: the command and environment the reliability
tests share (a 3-block, 32-wide DiM on 8x8 digits, the demo config otherwise)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent


def fit_args(digits: Path, root: Path, *extra: str) -> list[str]:
    """``dimlab fit`` arguments: the digits demo config shrunk to a tiny model, runs under ``root``."""
    return [
        "fit",
        "--config", str(REPO / "experiments/demo/digits.yaml"),
        f"--trainer.default_root_dir={root}",
        f"--data.train_shards={digits}", f"--data.val_shards={digits}",
        "--data.resolution=8", "--data.batch_size=8", "--data.num_workers=0",
        "--model.backbone.init_args.input_size=8", "--model.backbone.init_args.hidden_size=32",
        "--model.backbone.init_args.depth=3", "--model.backbone.init_args.d_state=4",
        "--model.backbone.init_args.scan_backend=torch",
        f"--checkpoint.dirpath={root / 'ckpt'}",
        *extra,
    ]  # fmt: skip


def dimlab_fit(digits: Path, root: Path, *extra: str) -> subprocess.Popen:
    """Start ``python -m dimlab fit`` with :func:`fit_args`; stdout and stderr are captured together."""
    args = [sys.executable, "-m", "dimlab", *fit_args(digits, root, *extra)]
    root.mkdir(parents=True, exist_ok=True)
    python_path = os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "PYTHONPATH": python_path}
    return subprocess.Popen(
        args, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def load_checkpoint(path: Path) -> dict:
    """A checkpoint file as saved (CPU tensors)."""
    return torch.load(path, map_location="cpu", weights_only=False)
