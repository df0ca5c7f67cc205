"""Slow (not in `make test`): `clipshield pretrain` with default settings reproduces the shipped model's accuracy."""
from __future__ import annotations

import pytest
import torch

from service.models import load_checkpoint_dir, load_model
from service.zero_shot import ZeroShotClassifier, build_text_head
from training.cli import main
from training.data import DatasetRequest, build_dataset
from training.eval.zeroshot import accuracy, batches

NAMES = ["miniworld/plain/color_shape/seen", "miniworld/outlined/shape/seen", "miniworld/noisy/color/seen"]


def _acc(model, name):
    ds = build_dataset(name, DatasetRequest(limit=256))
    clf = ZeroShotClassifier(model, build_text_head(model, ds.classnames, ds.templates))
    return accuracy(clf, batches(ds.images(), torch.tensor(ds.labels), 256))[0]


@pytest.mark.slow
def test_pretrain_reproduces_shipped_accuracy(tmp_path):
    assert main(["pretrain", "--output", str(tmp_path / "run"), "--threads", "2"]) == 0
    fresh = load_checkpoint_dir(tmp_path / "run" / "final")
    shipped = load_model("miniworld")
    for name in NAMES:
        assert abs(_acc(fresh, name) - _acc(shipped, name)) < 0.05, name
