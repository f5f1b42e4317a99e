"""Fixtures for the reliability tests: 8x8 digits shards written once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from dimlab.data.digits import write_digits_shards


@pytest.fixture(scope="session")
def digits8(tmp_path_factory) -> Path:
    """The sklearn digits at 8x8 as train/val shards with a manifest (1617 train, 180 val samples)."""
    out = tmp_path_factory.mktemp("digits8")
    write_digits_shards(out, size=8, shard_size=200)
    return out
