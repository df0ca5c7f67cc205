"""Resize and centre-crop arithmetic of `clipshield.service.preprocess.to_pixels`, without torch.

THE definition of the preprocessing is torchvision's (open_clip's eval transform and the papers'
loaders use it), written here so that serving needs no torch: `shorter_side_size` and `crop_box`
are torchvision's `_compute_resized_output_size` and `center_crop` arithmetic, and Pillow's
`Image.resize` is exactly what torchvision calls for PIL images, so the antialiased path is bit
for bit torchvision's. `interpolate` is `torch.nn.functional.interpolate(..., align_corners=False,
antialias=False)` (the record option `antialias=False`) as two separable weight matrices; it
matches torch to float rounding (same float32 source positions; torch weights and sums in
float32, these in float64: 1e-5, `tests/unit/test_service_preprocess.py`), and serving and
evaluation both run this one function, so served == evaluated stays exact.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

Interpolation = Literal["bicubic", "bilinear"]
CUBIC_A = -0.75  # torch's (and OpenCV's) bicubic convolution coefficient


def shorter_side_size(width: int, height: int, short: int) -> tuple[int, int]:
    """(width, height) with the shorter side `short` and the longer one scaled and truncated (torchvision's rule)."""
    if width <= height:
        return short, int(short * height / width)
    return int(short * width / height), short


def crop_box(width: int, height: int, size: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the centred size x size crop, offsets rounded as torchvision does."""
    top = int(round((height - size) / 2.0))
    left = int(round((width - size) / 2.0))
    return left, top, left + size, top + size


def _cubic_weights(t: np.ndarray) -> np.ndarray:
    """[N, 4] weights of the taps at offsets -1, 0, 1, 2 for fractional positions t [N]."""
    a = CUBIC_A

    def near(x: np.ndarray) -> np.ndarray:  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x: np.ndarray) -> np.ndarray:  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=1)


def _weight_matrix(n_in: int, n_out: int, mode: Interpolation) -> np.ndarray:
    """[n_out, n_in] float64 matrix: output sample i = row i . input samples (half-pixel centres, clamped edges)."""
    # Source positions in float32, as torch computes them (over a 10x downscale float64 positions move
    # bicubic taps enough to differ from torch by 2e-5); weights and sums in float64.
    scale = np.float32(n_in) / np.float32(n_out)
    src = ((np.arange(n_out, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)).astype(np.float64)
    rows = np.arange(n_out)
    w = np.zeros((n_out, n_in), dtype=np.float64)
    if mode == "bilinear":
        src = np.maximum(src, 0.0)
        i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        frac = src - i0
        np.add.at(w, (rows, i0), 1.0 - frac)
        np.add.at(w, (rows, i1), frac)
        return w
    base = np.floor(src).astype(np.int64)
    taps = _cubic_weights(src - base)
    for k in range(4):
        np.add.at(w, (rows, np.clip(base - 1 + k, 0, n_in - 1)), taps[:, k])
    return w


def interpolate(chw: np.ndarray, height: int, width: int, mode: Interpolation) -> np.ndarray:
    """float32 [C, height, width] from float [C, H, W]: `F.interpolate(align_corners=False, antialias=False)`."""
    _, h, w = chw.shape
    rows = _weight_matrix(h, height, mode)
    cols = _weight_matrix(w, width, mode)
    out = np.einsum("oh,chw,pw->cop", rows, chw.astype(np.float64), cols, optimize=True)
    return np.ascontiguousarray(out, dtype=np.float32)
