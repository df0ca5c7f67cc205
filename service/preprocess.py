"""Image decoding with limits, and the one resize/crop path from raw images to [0, 1] pixels.

Pipeline (open_clip's eval transform minus `Normalize`, which `PixelCLIP` and the exported ONNX
encoder do inside): decode -> RGB -> `to_pixels` (resize per `PreprocessConfig`, centre crop) ->
float32 CHW in [0, 1]. Serving, evaluation, fine-tuning, calibration and the demo all call
`to_pixels`; data sets reach it through `clipshield.datasets.transforms`, with a named preset
(`PRESETS`: model, paper, squash). For the mini world's 32x32 images under `model` it is an identity.
"""

from __future__ import annotations

import io
import logging
import struct
import warnings
import zlib
from typing import Literal, Optional, get_args

import numpy as np
from PIL import Image

from clipshield.service.config import PAPER_RESIZE_RATIO, PreprocessConfig
from clipshield.service.errors import BadInput, ConfigError, PayloadTooLarge, UnsupportedMediaType
from clipshield.service.resize import crop_box, interpolate, shorter_side_size
from clipshield.service.settings import DecodeLimits

log = logging.getLogger(__name__)

_MAGIC = {b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG"}
ACCEPTED_CONTENT_TYPES = ("image/png", "image/jpeg", "image/jpg", "application/octet-stream")


def sniff_format(data: bytes) -> Optional[str]:
    """'PNG' or 'JPEG' from the first bytes, None for anything else."""
    for magic, name in _MAGIC.items():
        if data[: len(magic)] == magic:
            return name
    return None


def decode_image(data: bytes, limits: DecodeLimits) -> Image.Image:
    """Decode PNG/JPEG bytes into an RGB image, enforcing `limits` before decoding pixels.

    Raises PayloadTooLarge (bytes or pixel count over the limit), UnsupportedMediaType (not an
    accepted format) or BadInput (corrupt or truncated data).
    """
    if not data:
        raise BadInput("empty image")
    if len(data) > limits.max_bytes:
        raise PayloadTooLarge(f"image is {len(data)} bytes; the limit is {limits.max_bytes}")
    fmt = sniff_format(data)
    if fmt is None or fmt not in limits.formats:
        raise UnsupportedMediaType(f"image format not accepted; send one of {', '.join(limits.formats)}")
    try:
        with warnings.catch_warnings():
            # Pillow's own bomb guard is process-wide; ours is the per-config pixel limit below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=[fmt])
            check_geometry(img.size, limits)
            img.load()
    except BadInput:
        raise
    except Image.DecompressionBombError as exc:
        raise PayloadTooLarge(f"image refused as a decompression bomb (over {limits.max_pixels} pixels)") from exc
    except (OSError, ValueError, SyntaxError, EOFError, struct.error, zlib.error) as exc:
        # Pillow's messages can carry object reprs; name the problem without them.
        raise BadInput(f"could not decode {fmt} image: corrupt or truncated data ({type(exc).__name__})") from exc
    return to_rgb(img)


def check_geometry(size: tuple[int, int], limits: DecodeLimits) -> None:
    """PayloadTooLarge over `max_pixels`, BadInput for an empty or over-elongated image (header only)."""
    width, height = size
    if width < 1 or height < 1:
        raise BadInput(f"image has no pixels ({width}x{height})")
    if width * height > limits.max_pixels:
        raise PayloadTooLarge(f"image is {width}x{height} pixels; the limit is {limits.max_pixels} pixels")
    if max(width, height) / min(width, height) > limits.max_aspect_ratio:
        raise BadInput(f"image aspect ratio {width}x{height} exceeds the limit of {limits.max_aspect_ratio:g}:1")


def to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB from any decoded PNG/JPEG mode.

    16-bit greyscale PNGs (modes I;16*, I) are scaled to 8 bits: Pillow's own conversion clips them
    at 255, which would turn almost every 16-bit image white. Palette, alpha (dropped, as in
    open_clip's `convert("RGB")`), CMYK and 1-bit images use Pillow's conversion.
    """
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I"):
        arr = np.asarray(img, dtype=np.float64)
        img = Image.fromarray(np.clip(np.rint(arr / 257.0), 0, 255).astype(np.uint8), "L")
    return img.convert("RGB")


def to_pixels(img: Image.Image, cfg: PreprocessConfig) -> np.ndarray:
    """float32 [3, S, S] in [0, 1] from a decoded RGB image (S = cfg.image_size): THE preprocessing.

    Serving (`load_pixels`), evaluation and fine-tuning data sets (`clipshield.datasets.transforms`, which
    wrap the result with `torch.from_numpy`), calibration and the demo all call this function.
    `resize_mode='none'` returns the image at its own size [3, H, W] (the `native` CIFAR/STL protocol).
    Pillow resampling, the path open_clip's and torchvision's PIL transforms take (bit for bit, see
    `clipshield.service.resize`), unless `cfg.antialias` is False. No torch: this runs in the server.
    """
    if cfg.resize_mode == "none":
        return _chw(np.asarray(img, dtype=np.float32) / 255.0)
    if not cfg.antialias:
        return _resize_without_antialias(_chw(np.asarray(img, dtype=np.float32) / 255.0), cfg)
    size = cfg.image_size
    resample = Image.Resampling.BICUBIC if cfg.interpolation == "bicubic" else Image.Resampling.BILINEAR
    if cfg.resize_mode == "squash":
        if img.size != (size, size):
            img = img.resize((size, size), resample)
    else:
        target = shorter_side_size(*img.size, cfg.resize_to)
        if img.size != target:
            img = img.resize(target, resample)
        if img.size != (size, size):
            img = img.crop(crop_box(*img.size, size))
    return _chw(np.asarray(img, dtype=np.float32) / 255.0)


def _chw(hwc: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(hwc.transpose(2, 0, 1))


def _resize_without_antialias(chw: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """The `antialias=False` branch of `to_pixels`: resize the float pixels (`clipshield.service.resize.interpolate`),
    centre-crop, clamp to [0, 1]."""
    size = cfg.image_size
    _, h, w = chw.shape
    width, height = (size, size) if cfg.resize_mode == "squash" else shorter_side_size(w, h, cfg.resize_to)
    if (width, height) != (w, h):
        chw = interpolate(chw, height, width, cfg.interpolation)
    left, top, right, bottom = crop_box(width, height, size)
    return np.ascontiguousarray(np.clip(chw[:, top:bottom, left:right], 0.0, 1.0))


Preset = Literal["model", "paper", "squash"]
PRESETS: tuple[str, ...] = get_args(Preset)
"""Named preprocessing choices: `model` = the model record's own (what serving does, the default);
`paper` = Resize(round(S*256/224), bilinear) + CenterCrop(S), the TGA-ZSR / PMG-AFT / TeCoA protocol
(docs/methods.md §0.7; their CIFAR/STL loaders squash instead, see `clipshield.datasets.transforms`); `squash` = resize
to S x S bilinear ignoring the aspect ratio (TGA-ZSR's CIFAR/STL loader)."""


def preset_config(name: str, model: PreprocessConfig) -> PreprocessConfig:
    """The preprocessing a preset gives for a model whose record preprocessing is `model`.

    Size, mean and std always stay the model's; raises ConfigError for an unknown preset.
    """
    if name == "model":
        return model
    if name == "paper":
        return model.model_copy(
            update={"resize_mode": "shortest", "interpolation": "bilinear", "resize_ratio": PAPER_RESIZE_RATIO, "antialias": True}
        )
    if name == "squash":
        return model.model_copy(update={"resize_mode": "squash", "interpolation": "bilinear", "resize_ratio": 1.0, "antialias": True})
    raise ConfigError(f"unknown preprocessing preset {name!r}; choose one of {', '.join(PRESETS)}")


def load_pixels(data: bytes, cfg: PreprocessConfig, limits: DecodeLimits) -> np.ndarray:
    """Bytes -> float32 [3, S, S] in [0, 1]: `decode_image` then `to_pixels`."""
    return to_pixels(decode_image(data, limits), cfg)


def encode_png(pixels: np.ndarray) -> bytes:
    """PNG bytes of float [3, H, W] pixels in [0, 1] (rounded to 8 bits): for clients and tests."""
    arr = np.clip(np.rint(np.asarray(pixels).transpose(1, 2, 0) * 255.0), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, format="PNG")
    return buf.getvalue()
