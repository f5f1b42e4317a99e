"""Fixtures for the high-resolution tests: a tiny class-conditional DiM checkpoint trained for two steps."""

from __future__ import annotations

import pytest
from highres_tiny import train_tiny_checkpoint


@pytest.fixture(scope="session")
def tiny_dim_ckpt(tmp_path_factory):
    """A tiny DiM (8x8 pixels, 1 channel, 4 classes, discrete SD schedule) checkpoint after 2 training steps."""
    return train_tiny_checkpoint(tmp_path_factory.mktemp("tiny_dim") / "tiny.ckpt")
