"""Where ``dimlab fit`` puts checkpoints and what ``--ckpt_path=last`` resumes: checkpoints stay under
``trainer.default_root_dir/checkpoints/`` whatever the logger, and ``last`` with nothing to resume is an error
unless the run asks for ``last-or-fresh``."""

from __future__ import annotations

import pytest
import torch
from reliability_cli import fit_args

from dimlab.commands.main import main

wandb = pytest.importorskip("wandb")


def _fit(digits, root, *extra: str) -> int:
    """In-process ``dimlab fit`` without ``checkpoint.dirpath`` (where checkpoints go is what is tested)."""
    args = [a for a in fit_args(digits, root, *extra) if not a.startswith("--checkpoint.dirpath=")]
    try:
        return main(args)
    finally:
        wandb.finish()


def _step(path) -> int:
    return torch.load(path, map_location="cpu", weights_only=False)["global_step"]


WANDB = (
    "--trainer.logger=lightning.pytorch.loggers.WandbLogger",
    "--trainer.logger.project=dimlab-tests",
    "--trainer.logger.offline=true",
)


def test_a_wandb_logger_does_not_move_checkpoints_and_last_resumes(digits8, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    root = tmp_path / "run"
    wandb_dir = f"--trainer.logger.save_dir={tmp_path / 'wandb'}"
    assert _fit(digits8, root, *WANDB, wandb_dir, "--trainer.max_steps=2") == 0
    last = root / "checkpoints" / "last.ckpt"
    assert _step(last) == 2, "checkpoints go to trainer.default_root_dir/checkpoints, not the W&B run folder"
    assert not list((tmp_path / "wandb").rglob("*.ckpt"))

    # the next launch gets a new W&B run id, and still continues from step 2
    assert _fit(digits8, root, *WANDB, wandb_dir, "--trainer.max_steps=3", "--ckpt_path=last") == 0
    assert _step(last) == 3


def test_ckpt_path_last_with_nothing_to_resume_is_an_error(digits8, tmp_path, capsys):
    root = tmp_path / "run"
    with pytest.raises(SystemExit) as info:
        _fit(digits8, root, "--trainer.max_steps=1", "--ckpt_path=last")
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"--ckpt_path=last: no last checkpoint in {root / 'checkpoints'}" in err
    assert "--ckpt_path=last-or-fresh" in err
    assert not (root / "checkpoints").exists(), "nothing was trained"


def test_ckpt_path_last_or_fresh_starts_fresh_then_resumes(digits8, tmp_path):
    root = tmp_path / "run"
    assert _fit(digits8, root, "--trainer.max_steps=2", "--ckpt_path=last-or-fresh") == 0
    assert _step(root / "checkpoints" / "last.ckpt") == 2
    assert _fit(digits8, root, "--trainer.max_steps=3", "--ckpt_path=last-or-fresh") == 0
    assert _step(root / "checkpoints" / "last.ckpt") == 3


@pytest.mark.parametrize(
    ("extra", "kept"),
    [
        ((), ["epoch=0-step=6.ckpt", "last.ckpt"]),
        (("--checkpoint.save_top_k=-1",), [f"epoch=0-step={s}.ckpt" for s in (2, 4, 6)] + ["last.ckpt"]),
    ],
)
def test_every_n_train_steps_keeps_the_newest_checkpoint_unless_save_top_k_is_minus_one(
    digits8, tmp_path, caplog, extra, kept
):
    # What README "Training" says: Lightning's ModelCheckpoint keeps save_top_k=1 periodic checkpoints by default
    root = tmp_path / "run"
    assert _fit(digits8, root, "--trainer.max_steps=6", "--checkpoint.every_n_train_steps=2", *extra) == 0
    assert sorted(p.name for p in (root / "checkpoints").iterdir()) == kept
    assert _step(root / "checkpoints" / "last.ckpt") == 6
    last = root / "checkpoints" / "last.ckpt"
    assert (
        f"dimlab fit: stopped at step 6; last checkpoint {last}; summary {root / 'summary.json'}"
        in caplog.text
    )
