"""Slow (not in `make test`): `clipshield pretrain` with default settings reproduces the shipped model's accuracy."""

from __future__ import annotations

import pytest

from clipshield.cli.main import main
from clipshield.evaluation.measure import clean_top1, zero_shot_task
from clipshield.models.factory import load_checkpoint_dir, load_model

NAMES = ["miniworld/plain/color_shape/seen", "miniworld/outlined/shape/seen", "miniworld/noisy/color/seen"]


def _acc(model, name):
    ds, clf, labels = zero_shot_task(model, name, 256)
    return clean_top1(clf, ds.images(), labels)[0]


@pytest.mark.slow
def test_pretrain_reproduces_shipped_accuracy(tmp_path):
    assert main(["pretrain", "--output", str(tmp_path / "run"), "--threads", "2"]) == 0
    fresh = load_checkpoint_dir(tmp_path / "run" / "final")
    shipped = load_model("miniworld")
    for name in NAMES:
        assert abs(_acc(fresh, name) - _acc(shipped, name)) < 0.05, name
