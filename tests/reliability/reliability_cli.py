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


class FitProcess(subprocess.Popen):
    """A ``dimlab fit`` subprocess whose stdout and stderr go to a log file under its run folder.

    A pipe would fill while a test polls for a checkpoint without reading it, and the child would then block
    forever. ``communicate()`` waits and returns ``(log text, None)`` like a captured pipe.
    """

    def __init__(self, args: list[str], root: Path, env: dict[str, str]):
        self.log_path = root / f"fit-{len(list(root.glob('fit-*.log')))}.log"
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in communicate()
        super().__init__(args, cwd=root, env=env, stdout=self._log, stderr=subprocess.STDOUT, text=True)

    def communicate(self, input=None, timeout=None):  # noqa: A002 - Popen's signature
        self.wait(timeout=timeout)
        self._log.close()
        return self.log_path.read_text(), None


def dimlab_fit(digits: Path, root: Path, *extra: str) -> FitProcess:
    """Start ``python -m dimlab fit`` with :func:`fit_args`; stdout and stderr are logged together."""
    args = [sys.executable, "-m", "dimlab", *fit_args(digits, root, *extra)]
    root.mkdir(parents=True, exist_ok=True)
    python_path = os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "PYTHONPATH": python_path}
    return FitProcess(args, root, env)


def load_checkpoint(path: Path) -> dict:
    """A checkpoint file as saved (CPU tensors)."""
    return torch.load(path, map_location="cpu", weights_only=False)
