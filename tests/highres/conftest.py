"""Fixtures for the high-resolution tests: a tiny class-conditional DiM checkpoint trained for two steps."""

from __future__ import annotations

import pytest

from tiny_models import train_tiny_checkpoint

#: The tiny DiM of these tests: depth 5, so two decoder blocks receive long skips and the skip-tune ramp has two
#: distinct factors.
HIGHRES_DEPTH = 5


@pytest.fixture(scope="session")
def tiny_dim_ckpt(tmp_path_factory):
    """A tiny DiM (8x8 pixels, 1 channel, 4 classes, depth 5, discrete SD schedule) checkpoint after 2 steps."""
    return train_tiny_checkpoint(tmp_path_factory.mktemp("tiny_dim") / "tiny.ckpt", depth=HIGHRES_DEPTH)
