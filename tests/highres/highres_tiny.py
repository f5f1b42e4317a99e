"""Tiny high-resolution test models: the DiM settings and a two-step training run that saves a checkpoint."""

from __future__ import annotations

import torch

TINY_DIM = dict(
    input_size=8,
    patch_size=2,
    in_channels=1,
    hidden_size=32,
    depth=5,  # two decoder blocks receive long skips, so the skip-tune ramp has two distinct factors
    num_classes=4,
    d_state=4,
    scan_backend="torch",
)


def train_tiny_checkpoint(path, schedule: str = "sd_discrete", size: int = 8, steps: int = 2):
    """Train ``TINY_DIM`` at ``size`` x ``size`` pixels for ``steps`` optimizer steps and save a checkpoint."""
    from dimlab.lit.module import DiffusionModule
    from dimlab.models.dim import DiM
    from tiny_models import tiny_trainer

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    data = [{"x": torch.rand(1, size, size, generator=g) * 2 - 1, "y": torch.tensor(i % 4)} for i in range(8)]
    module = DiffusionModule(
        DiM(**{**TINY_DIM, "input_size": size}),
        schedule=schedule,
        warmup_steps=0,
        lr=1e-3,
        ema_decay=0.5,
    )
    trainer = tiny_trainer(path.parent, max_steps=steps)
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=4))
    trainer.save_checkpoint(path)
    return path
