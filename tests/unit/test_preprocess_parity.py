"""What is measured is what is served: evaluation loader pixels == served pixels on real photos.

The evaluation path reads a `folder/<dir>` data set from disk through the registry (as
`clipshield evaluate` does); the served path decodes the same encoded bytes with
`clipshield.service.preprocess.load_pixels` (as `ClipshieldService` does). Both decode with Pillow and call
`to_pixels`, so the pixels must be bit-identical: the 1/255 allowance of the issue is not needed.
"""

from __future__ import annotations

import numpy as np
import pytest

from clipshield.datasets import DatasetRequest, build_dataset
from clipshield.datasets.real import RealDataset
from clipshield.service.config import PAPER_RESIZE_RATIO, PreprocessConfig
from clipshield.service.preprocess import load_pixels
from clipshield.service.settings import DecodeLimits

from .photo_helpers import write_photo_folder

RECORDS = {
    "open_clip default (bicubic, shortest side)": PreprocessConfig(image_size=224),
    "bilinear squash": PreprocessConfig(image_size=224, interpolation="bilinear", resize_mode="squash"),
    "paper ratio in the record": PreprocessConfig(image_size=224, interpolation="bilinear", resize_ratio=PAPER_RESIZE_RATIO),
    "no antialias (tensor resize)": PreprocessConfig(image_size=224, antialias=False),
}


@pytest.fixture(scope="module")
def photo_root(tmp_path_factory):
    """The photos written once per module: (data root, class folder -> encoded bytes)."""
    root = tmp_path_factory.mktemp("data")
    return root, write_photo_folder(root)


def _pairs(photo_root, record: PreprocessConfig, preset: str = "model"):
    root, sent = photo_root
    ds = build_dataset("folder/photos", DatasetRequest(root=root, split="test", preprocess=record, preset=preset))
    assert isinstance(ds, RealDataset)  # a folder data set wraps torchvision's ImageFolder (`base`)
    assert len(ds) == len(sent) == 12
    for i, (_path, label) in enumerate(ds.base.samples):
        evaluated, ds_label = ds[i]
        assert ds_label == label
        served = load_pixels(sent[ds.base.classes[label]], record, DecodeLimits())
        yield ds.base.classes[label], evaluated.numpy(), served


@pytest.mark.parametrize("record", list(RECORDS.values()), ids=list(RECORDS))
def test_evaluation_loader_pixels_equal_served_pixels(photo_root, record):
    worst = 0.0
    for name, evaluated, served in _pairs(photo_root, record):
        assert evaluated.dtype == served.dtype == np.float32 and evaluated.shape == served.shape == (3, 224, 224), name
        assert 0.0 <= served.min() and served.max() <= 1.0
        worst = max(worst, float(np.abs(evaluated - served).max()))
    # same decoder, same function: identical (docs/evaluation.md "Preprocessing" quotes this 0)
    assert worst == 0.0


def test_the_paper_preset_is_visibly_not_what_is_served(photo_root):
    """The check above would catch a second definition: the papers' Resize(256)+CenterCrop(224) differs
    from the served open_clip preprocessing by far more than 1/255 on every photo."""
    for name, evaluated, served in _pairs(photo_root, PreprocessConfig(image_size=224), preset="paper"):
        assert float(np.abs(evaluated - served).max()) > 8 / 255, name
