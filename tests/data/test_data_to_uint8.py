"""to_uint8 rounds like a saved PNG (never truncates), clamps, and rejects bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dimlab.data.transforms import to_uint8


def test_minus_one_one_rounds_to_nearest_level():
    # (x + 1) * 127.5 = 0.6, 1.4, 254.6 -> 1, 1, 255; truncation would give 0, 1, 254.
    x = torch.tensor([0.6, 1.4, 254.6]) / 127.5 - 1
    assert to_uint8(x).tolist() == [1, 1, 255]
    assert to_uint8(torch.tensor([-1.0, 0.0, 1.0])).tolist() == [0, 128, 255]  # 127.5 rounds half to even


def test_zero_one_variant_and_clamping():
    x = torch.tensor([0.0, 0.3 / 255, 0.7 / 255, 1.0, -0.2, 1.3])
    assert to_uint8(x, value_range=(0, 1)).tolist() == [0, 0, 1, 255, 0, 255]
    assert to_uint8(torch.tensor([-3.0, 3.0])).tolist() == [0, 255]


def test_matches_png_round_trip(tmp_path):
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 8, 8, generator=g) * 2 - 1
    u8 = to_uint8(x)
    assert u8.dtype == torch.uint8
    Image.fromarray(u8.permute(1, 2, 0).numpy()).save(tmp_path / "a.png")
    back = torch.from_numpy(np.array(Image.open(tmp_path / "a.png"))).permute(2, 0, 1)
    assert torch.equal(back, u8)
    # and the value differs from torchmetrics' truncating conversion somewhere
    truncated = (((x + 1) / 2) * 255).byte()
    assert (truncated != u8).any()


def test_bad_input():
    with pytest.raises(TypeError, match="floating-point"):
        to_uint8(torch.zeros(3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="value_range"):
        to_uint8(torch.zeros(3), value_range=(0, 255))
