"""Mini-world images reach a model exactly as serving would preprocess the same image sent as a PNG
(the claim of `clipshield.datasets.miniworld_sets`): identical pixels, not merely close ones, at 224 px."""

from __future__ import annotations

import numpy as np
import pytest

from clipshield.datasets import DatasetRequest, build_dataset
from clipshield.service.config import PreprocessConfig
from clipshield.service.preprocess import encode_png, load_pixels
from clipshield.service.settings import DecodeLimits

RECORDS = {
    "open_clip default (bicubic, shortest side)": PreprocessConfig(image_size=224),
    "bilinear squash": PreprocessConfig(image_size=224, interpolation="bilinear", resize_mode="squash"),
    "no antialias (tensor resize)": PreprocessConfig(image_size=224, antialias=False),
}


@pytest.mark.parametrize("record", RECORDS.values(), ids=list(RECORDS))
def test_miniworld_pixels_equal_served_pixels(record):
    ds = build_dataset("miniworld/textured/color_shape/seen", DatasetRequest(limit=3, preprocess=record))
    evaluated = ds.images().numpy()
    raw = ds.base.images().numpy()  # the world's own 32 x 32 renders, 8-bit valued
    assert evaluated.shape == (3, 3, 224, 224) and raw.shape[-1] == 32
    for i in range(len(raw)):
        served = load_pixels(encode_png(raw[i]), record, DecodeLimits())
        assert np.array_equal(served, evaluated[i]), f"image {i}: max diff {np.abs(served - evaluated[i]).max()}"
