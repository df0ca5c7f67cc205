"""Image decoding with limits and the resize/crop path to [0, 1] pixels."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from clipshield.service.config import PreprocessConfig
from clipshield.service.errors import BadInput, PayloadTooLarge, UnsupportedMediaType
from clipshield.service.preprocess import decode_image, encode_png, load_pixels, sniff_format, to_pixels
from clipshield.service.settings import DecodeLimits

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


def test_old_records_load_with_todays_serving_defaults():
    """Records written before resize_ratio/antialias existed keep their behaviour (the shipped one is such a record)."""
    from clipshield.models.checkpoint import load_record
    from clipshield.models.factory import SHIPPED_MODELS
    from clipshield.service.config import ModelRecord

    old = {"image_size": 224, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "interpolation": "bilinear", "resize_mode": "squash"}
    cfg = PreprocessConfig.model_validate(old)
    assert (cfg.resize_ratio, cfg.antialias, cfg.resize_to) == (1.0, True, 224)
    shipped = load_record(SHIPPED_MODELS["miniworld"]).preprocess
    assert (shipped.image_size, shipped.resize_ratio, shipped.antialias) == (32, 1.0, True)
    with pytest.raises(ValueError, match="'shortest' or 'squash'"):
        ModelRecord(name="m", open_clip_name="ViT-B-32", preprocess=PreprocessConfig(image_size=224, resize_mode="none"))


def test_paper_preset_reproduces_the_papers_torchvision_transform():
    """`paper` = torchvision Resize(256) + CenterCrop(224) (+ ToTensor) as TGA-ZSR / PMG-AFT load images."""
    from torchvision import transforms as T

    from clipshield.service.preprocess import preset_config

    rng = np.random.default_rng(2)
    img = Image.fromarray((rng.random((300, 451, 3)) * 255).astype(np.uint8), "RGB")
    cfg = preset_config("paper", PreprocessConfig(image_size=224))
    ref = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor()])(img).numpy()
    np.testing.assert_allclose(to_pixels(img, cfg), ref, atol=1e-6)  # both uint8 / 255: float rounding only
    squash = T.Compose([T.Resize((224, 224)), T.ToTensor()])(img).numpy()
    np.testing.assert_allclose(to_pixels(img, preset_config("squash", PreprocessConfig(image_size=224))), squash, atol=1e-6)


def test_antialias_off_resizes_the_float_tensor_without_antialiasing():
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(3)
    arr = (rng.random((64, 64, 3)) * 255).astype(np.uint8)
    cfg = PreprocessConfig(image_size=16, interpolation="bilinear", antialias=False)
    ours = to_pixels(Image.fromarray(arr, "RGB"), cfg)
    x = torch.from_numpy(arr.transpose(2, 0, 1).astype(np.float32) / 255.0)[None]
    ref = F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False, antialias=False)[0].numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-6)
    smoothed = to_pixels(Image.fromarray(arr, "RGB"), cfg.model_copy(update={"antialias": True}))
    assert np.abs(smoothed - ours).max() > 0.1  # 4x downscaling of noise: antialiasing matters


def test_native_mode_keeps_the_size_and_the_model_resizes_inside():
    """`resize_mode='none'` (CIFAR/STL `native`): pixels at their own size; `PixelCLIP.prepare` resizes them
    with F.interpolate (docs/methods.md §0.2) and leaves S x S input unresampled."""
    import torch
    import torch.nn.functional as F

    from clipshield.models.factory import load_model

    model = load_model("miniworld")
    rng = np.random.default_rng(4)
    arr = (rng.random((20, 24, 3)) * 255).astype(np.uint8)
    native = to_pixels(Image.fromarray(arr, "RGB"), PreprocessConfig(image_size=32, resize_mode="none"))
    assert native.shape == (3, 20, 24)
    x = torch.from_numpy(native)[None]
    inside = F.interpolate(x, size=(32, 32), mode=model.interpolation, align_corners=False)
    assert torch.equal(model.prepare(x), (inside - model.mean) / model.std)
    square = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert torch.equal(model.prepare(square), (square - model.mean) / model.std)


@pytest.mark.parametrize("shape", [(37, 53), (53, 37), (224, 301), (10, 10)])
@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_torch_free_resize_is_torchvisions(shape, interpolation):
    """`to_pixels` (Pillow + `clipshield.service.resize`, no torch) == torchvision's transforms, the definition it replaced:
    bit for bit on PIL images; to float rounding for the no-antialias tensor resize (up- and downscaling)."""
    import torch
    from torchvision.transforms import InterpolationMode, functional as TF

    rng = np.random.default_rng(sum(shape))
    img = Image.fromarray((rng.random((*shape, 3)) * 255).astype(np.uint8), "RGB")
    mode = InterpolationMode.BICUBIC if interpolation == "bicubic" else InterpolationMode.BILINEAR
    for cfg in (
        PreprocessConfig(image_size=24, interpolation=interpolation),
        PreprocessConfig(image_size=24, interpolation=interpolation, resize_ratio=256 / 224),
        PreprocessConfig(image_size=24, interpolation=interpolation, resize_mode="squash"),
    ):
        target = [24, 24] if cfg.resize_mode == "squash" else cfg.resize_to
        ref = TF.center_crop(TF.resize(img, target, interpolation=mode), [24, 24])
        np.testing.assert_array_equal(to_pixels(img, cfg), np.asarray(ref, dtype=np.float32).transpose(2, 0, 1) / 255.0)
        x = torch.from_numpy(np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 255.0)
        tensor_ref = TF.center_crop(TF.resize(x, target, interpolation=mode, antialias=False), [24, 24]).clamp(0, 1)
        ours = to_pixels(img, cfg.model_copy(update={"antialias": False}))
        # torch interpolates in float32, `clipshield.service.resize` in float64: differences are float32 rounding (< 1/400 of a level)
        np.testing.assert_allclose(ours, tensor_ref.numpy(), atol=1e-5, rtol=0)
