"""Fixtures of the command tests: a tiny class-conditional DiM checkpoint (4 classes, 8x8 grey pixels)."""

from __future__ import annotations

import pytest

from tiny_models import train_tiny_checkpoint


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    """A tiny DiM (8x8 pixels, 1 channel, 4 classes, patch 2, discrete SD schedule) checkpoint after 2 steps."""
    return train_tiny_checkpoint(tmp_path_factory.mktemp("tiny_ckpt") / "tiny.ckpt")
