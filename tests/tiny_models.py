"""Tiny backbones and a quiet one-process CPU Lightning Trainer shared by tests (fast on 2 CPU cores)."""

from __future__ import annotations


def tiny_uvit(num_classes: int = 4, channels: int = 1, size: int = 8):
    from dimlab.models.uvit import UViT

    return UViT(
        input_size=size,
        patch_size=2,
        in_channels=channels,
        hidden_size=32,
        depth=3,
        num_heads=2,
        num_classes=num_classes,
    )


def tiny_dim(num_classes: int = 4, channels: int = 1, size: int = 8):
    from dimlab.models.dim import DiM

    return DiM(
        input_size=size,
        patch_size=2,
        in_channels=channels,
        hidden_size=32,
        depth=3,
        num_classes=num_classes,
        d_state=4,
        scan_backend="torch",
    )


def tiny_trainer(root, max_steps: int = 4, **overrides):
    """A quiet one-process CPU ``L.Trainer`` for short ``fit`` runs in tests, writing only under ``root``.

    No logger, no checkpointing, no progress bar, no model summary and no validation (sanity check included);
    ``overrides`` are passed to ``L.Trainer`` and win over these defaults, e.g. ``callbacks=[...]``,
    ``enable_checkpointing=True`` for a run with a ``ModelCheckpoint`` or ``accelerator="cuda"``.
    """
    import lightning as L

    settings = dict(
        accelerator="cpu",
        devices=1,
        max_steps=max_steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        default_root_dir=str(root),
    )
    settings.update(overrides)
    return L.Trainer(**settings)
