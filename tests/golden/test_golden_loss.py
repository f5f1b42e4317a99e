"""A golden loss curve: the per-step training loss of a tiny DiM on the 8 px digits, pinned in this folder.

Unit tests check pieces; this checks the whole numeric path at once (data order and decoding, noise and time
draws, CFG label dropout, the DiM forward and backward through the torch scan, AdamW, warmup and clipping), as
torchtitan pins its loss curves. Any change that moves a number fails it, so drift cannot creep in unnoticed.

When a change is *meant* to move the numbers (a new recipe, a fixed bug), regenerate the curve and say why in the
commit: ``PYTHONPATH=src python tests/golden/test_golden_loss.py``.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import lightning as L
import pytest
import torch

from dimlab.data.digits import write_digits_shards
from dimlab.lit.module import DiffusionModule

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tiny_models, also when run as a script
from tiny_models import digits8_data, tiny_dim, tiny_trainer  # noqa: E402

GOLDEN = Path(__file__).with_name("loss_curve_dim_digits8.json")
STEPS = 50
#: Relative tolerance per step: far below any real change (one more or less optimizer step moves the curve by
#: percents), above float reassociation between CPUs of one architecture.
RTOL = 1e-5


class LossCurve(L.Callback):
    """The training loss of every optimizer step, as returned by ``training_step``."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"] if isinstance(outputs, dict) else outputs))


def train_curve(digits: Path, root: Path) -> list[float]:
    """``STEPS`` steps of the digits demo recipe on the tiny DiM (seed 0, one thread, CPU); the per-step losses."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: the same reduction order on every machine
    try:
        L.seed_everything(0, verbose=False)
        module = DiffusionModule(
            tiny_dim(num_classes=10),
            schedule="vp_sde",
            p_uncond=0.1,
            lr=2e-3,
            betas=(0.9, 0.99),
            adam_eps=1e-8,
            weight_decay=0.0,
            warmup_steps=10,
            ema_decay=0.995,
            seed=0,
        )
        data = digits8_data(digits, batch_size=16, shuffle_buffer=64, seed=0)
        curve = LossCurve()
        trainer = tiny_trainer(root, max_steps=STEPS, gradient_clip_val=1.0, callbacks=[curve])
        trainer.fit(module, data)
    finally:
        torch.set_num_threads(threads)
    return curve.losses


def test_tiny_dim_loss_curve_matches_the_golden_one(digit_shards, tmp_path):
    golden = json.loads(GOLDEN.read_text())
    losses = train_curve(digit_shards(size=8, shard_size=200), tmp_path)
    assert len(losses) == STEPS == len(golden["losses"])
    assert losses == pytest.approx(golden["losses"], rel=RTOL, abs=0.0)


if __name__ == "__main__":
    torch.set_flush_denormal(True)  # as the test session does (tests/conftest.py)
    with tempfile.TemporaryDirectory() as tmp:
        write_digits_shards(Path(tmp) / "digits", size=8, shard_size=200)
        losses = train_curve(Path(tmp) / "digits", Path(tmp) / "run")
    GOLDEN.write_text(
        json.dumps({"torch": torch.__version__, "steps": STEPS, "losses": losses}, indent=1) + "\n"
    )
    print(f"wrote {len(losses)} losses to {GOLDEN}")
