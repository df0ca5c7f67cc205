"""Image decoding with limits and the resize/crop path to [0, 1] pixels."""
from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from service.config import PreprocessConfig
from service.errors import BadInput, PayloadTooLarge, UnsupportedMediaType
from service.preprocess import decode_image, encode_png, load_pixels, sniff_format, to_pixels
from service.settings import DecodeLimits

LIMITS = DecodeLimits()


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _bomb_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height (never decoded by a correct server)."""
    data = bytearray(_png(Image.new("L", (1, 1))))
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF)
    return bytes(data)


def test_png_roundtrip_is_identity_at_model_size():
    rng = np.random.default_rng(0)
    pixels = np.round(rng.random((3, 32, 32)) * 255) / 255
    out = load_pixels(encode_png(pixels), PreprocessConfig(image_size=32), LIMITS)
    assert out.dtype == np.float32 and out.shape == (3, 32, 32)
    np.testing.assert_allclose(out, pixels, atol=1e-6)


def test_jpeg_and_rgba_and_grayscale_become_rgb():
    for mode, fmt in (("RGBA", "PNG"), ("L", "PNG"), ("RGB", "JPEG")):
        buf = io.BytesIO()
        Image.new(mode, (40, 20), color=128 if mode == "L" else (10, 200, 30, 255)[: len(mode)]).save(buf, format=fmt)
        img = decode_image(buf.getvalue(), LIMITS)
        assert img.mode == "RGB" and img.size == (40, 20)


def test_resize_matches_open_clip_eval_transform():
    from open_clip.transform import image_transform

    rng = np.random.default_rng(1)
    img = Image.fromarray((rng.random((48, 80, 3)) * 255).astype(np.uint8), "RGB")
    ours = to_pixels(img, PreprocessConfig(image_size=32))
    ref = image_transform(32, is_train=False, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))(img).numpy()
    assert ours.shape == (3, 32, 32)
    np.testing.assert_allclose(ours, ref, atol=1e-6)


def test_limits_and_formats():
    png = encode_png(np.zeros((3, 8, 8)))
    assert sniff_format(png) == "PNG"
    with pytest.raises(PayloadTooLarge, match="bytes"):
        decode_image(png, DecodeLimits(max_bytes=10))
    with pytest.raises(UnsupportedMediaType):
        decode_image(b"GIF89a" + b"\0" * 20, LIMITS)
    with pytest.raises(UnsupportedMediaType):
        decode_image(png, DecodeLimits(formats=("JPEG",)))
    with pytest.raises(BadInput, match="could not decode"):
        decode_image(png[:40], LIMITS)
    with pytest.raises(BadInput, match="empty"):
        decode_image(b"", LIMITS)


def test_decompression_bomb_refused_from_header():
    bomb = _bomb_png(10_000, 10_000)
    assert len(bomb) < 100
    with pytest.raises(PayloadTooLarge, match="10000x10000 pixels; the limit is 24000000"):
        decode_image(bomb, LIMITS)
    with pytest.raises(PayloadTooLarge, match="decompression bomb"):  # Pillow's own guard, at open
        decode_image(_bomb_png(100_000, 100_000), LIMITS)


def test_16bit_png_is_scaled_not_clipped():
    """Pillow's own I;16 -> RGB conversion clips at 255 (a mid-grey 16-bit image turns white)."""
    grey = np.full((4, 4), 32896, dtype=np.uint16)  # 128 * 257
    out = load_pixels(_png(Image.fromarray(grey)), PreprocessConfig(image_size=4), LIMITS)
    np.testing.assert_allclose(out, 128 / 255, atol=1e-6)


@pytest.mark.parametrize("size", [(1, 51), (4000, 2)])
def test_extreme_aspect_ratio_refused_before_decoding(size):
    with pytest.raises(BadInput, match="aspect ratio"):
        decode_image(_png(Image.new("L", size)), LIMITS)


def test_corrupt_message_has_no_object_repr():
    with pytest.raises(BadInput) as info:
        decode_image(b"\x89PNG\r\n\x1a\n" + b"\x00" * 30, LIMITS)
    assert "0x" not in str(info.value) and "PNG" in str(info.value)
