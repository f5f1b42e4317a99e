"""ADM centre crop and the image encode / decode / scaling helpers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from dimlab.data.transforms import adm_center_crop, decode_image, encode_image, uint8_to_signed


def _gradient(width: int, height: int) -> Image.Image:
    x = np.linspace(0, 255, width)[None, :, None]
    y = np.linspace(0, 255, height)[:, None, None]
    rgb = np.concatenate(
        [
            np.broadcast_to(x, (height, width, 1)),
            np.broadcast_to(y, (height, width, 1)),
            np.full((height, width, 1), 90.0),
        ],
        axis=2,
    )
    return Image.fromarray(rgb.astype(np.uint8))


@pytest.mark.parametrize(("size", "resolution"), [((1000, 700), 256), ((300, 520), 256), ((100, 60), 64)])
def test_adm_center_crop_size_and_centre(size, resolution):
    image = _gradient(*size)
    out = np.asarray(adm_center_crop(image, resolution)).astype(float)
    assert out.shape == (resolution, resolution, 3)
    # a linear ramp stays centred: the crop's middle column / row keeps the source's mid value
    assert abs(out[:, resolution // 2, 0].mean() - 127.5) < 3
    assert abs(out[resolution // 2, :, 1].mean() - 127.5) < 3


def test_adm_center_crop_halves_with_box_before_bicubic():
    # 1100 x 600 at 256: one BOX halving (600 >= 512) to 550 x 300, then BICUBIC to 469 x 256
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (600, 1100, 3), dtype=np.uint8))
    halved = image.resize((550, 300), Image.BOX).resize((469, 256), Image.BICUBIC)
    expected = np.asarray(halved)[:, 106 : 106 + 256]
    assert np.array_equal(np.asarray(adm_center_crop(image, 256)), expected)


def test_png_roundtrip_is_lossless_and_jpeg_is_close():
    pixels = np.asarray(_gradient(48, 32))
    assert np.array_equal(decode_image(encode_image(pixels, "png"), channels=3), pixels)
    jpeg = decode_image(encode_image(pixels, "jpeg", quality=95), channels=3)
    assert np.abs(jpeg.astype(int) - pixels).mean() < 2
    grey = decode_image(encode_image(pixels[:, :, 0], "png"), channels=1)
    assert grey.shape == (32, 48, 1) and np.array_equal(grey[:, :, 0], pixels[:, :, 0])


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="format"):
        encode_image(np.zeros((4, 4), np.uint8), "gif")
    with pytest.raises(ValueError, match="channels"):
        decode_image(b"", channels=2)


def test_uint8_to_signed_range():
    out = uint8_to_signed(torch.tensor([0, 255, 128], dtype=torch.uint8))
    assert out.dtype == torch.float32
    assert torch.allclose(out, torch.tensor([-1.0, 1.0, 128 / 127.5 - 1]), atol=1e-6)


def test_undecodable_bytes_say_what_they_are_not_where_they_are_in_memory():
    """PIL names the in-memory buffer (``<_io.BytesIO object at 0x...>``); the message gives the bytes instead."""
    with pytest.raises(
        ValueError, match=r"not an image PIL can read \(12 bytes, starting b'\\x89PNG gar'\)"
    ) as err:
        decode_image(b"\x89PNG garbage", 3)
    assert "object at 0x" not in str(err.value)
