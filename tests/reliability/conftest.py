"""Fixtures for the reliability tests: 8x8 digits shards written once per session."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def digits8(digit_shards) -> Path:
    """The sklearn digits at 8x8 as train/val shards with a manifest (1617 train, 180 val samples)."""
    return digit_shards(size=8, shard_size=200)
