"""``python -m dimlab fit`` on tiny digits shards, as a subprocess: the command and environment the reliability
tests share (a 3-block, 32-wide DiM on 8x8 digits, the demo config otherwise)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
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
    forever. ``communicate()`` waits and returns ``(log text, None)`` like a captured pipe. The child leads its own
    process group (its DDP ranks join it), so a run that outlives its timeout is ended whole and leaves nothing
    behind for later tests; before that its Python stacks go to the log (faulthandler), and the failure shows them.
    """

    def __init__(self, args: list[str], root: Path, env: dict[str, str]):
        self.log_path = root / f"fit-{len(list(root.glob('fit-*.log')))}.log"
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in communicate()
        super().__init__(
            args,
            cwd=root,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )

    def communicate(self, input=None, timeout=None):  # noqa: A002 - Popen's signature
        try:
            self.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"dimlab fit still running after {timeout} s\n{self.stop()}") from None
        self._log.close()
        return self.log_path.read_text(), None

    def wait_until(self, condition, what: str, timeout: float = 240.0) -> None:
        """Poll ``condition()`` until it is true; fail with the log if the run exits or ``timeout`` passes first.

        Poll for something that stays true once it happened (``last.ckpt``), not for a file that a later step
        deletes again: ``ModelCheckpoint`` keeps only the newest ``epoch=0-step=N.ckpt``, ~0.15 s here.
        """
        deadline = time.monotonic() + timeout
        while not condition():
            if self.poll() is not None:
                raise AssertionError(f"dimlab fit exited ({self.returncode}) before {what}\n{self.stop()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"dimlab fit: no {what} after {timeout} s\n{self.stop()}")
            time.sleep(0.05)

    def stop(self) -> str:
        """End a run that is still going, with its process group, after a faulthandler stack dump; the log's tail."""
        if self.poll() is None:
            # While the leader is not reaped its pid is still this group's id, so nothing else can be hit.
            os.killpg(self.pid, signal.SIGABRT)  # PYTHONFAULTHANDLER=1: each process prints its stacks first
            time.sleep(5)
            os.killpg(self.pid, signal.SIGKILL)
        self.wait()
        self._log.close()
        lines = self.log_path.read_text().splitlines()
        return "\n".join(line for line in lines if not line.startswith("Extension modules:"))[-12000:]


def dimlab_fit(digits: Path, root: Path, *extra: str) -> FitProcess:
    """Start ``python -m dimlab fit`` with :func:`fit_args`; stdout and stderr are logged together."""
    args = [sys.executable, "-m", "dimlab", *fit_args(digits, root, *extra)]
    root.mkdir(parents=True, exist_ok=True)
    python_path = os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH")) if p)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "WANDB_MODE": "offline",
        "PYTHONPATH": python_path,
        "PYTHONFAULTHANDLER": "1",
    }
    return FitProcess(args, root, env)


def load_checkpoint(path: Path) -> dict:
    """A checkpoint file as saved (CPU tensors)."""
    return torch.load(path, map_location="cpu", weights_only=False)
