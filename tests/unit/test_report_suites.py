"""Evaluation reports (issue 27): rows named by weights digest, averages only within a suite."""

from __future__ import annotations

from clipshield.evaluation.report import averages, markdown, suite
from clipshield.evaluation.schema import CellKey, CellResult
from clipshield.service.config import PreprocessConfig

PRE = PreprocessConfig(image_size=32)


def _cell(weights: str, dataset: str, clean: float, robust: float, model_id: str = "runs/finetune/tga-zsr/final") -> CellResult:
    key = CellKey(weights=weights, dataset=dataset, preprocess=PRE, attack="pgd", eps=4 / 255, steps=2, seed=0)
    return CellResult(key=key, model_id=model_id, n=8, clean=clean, robust=robust)


def test_suites():
    assert suite("miniworld/plain/shape/seen") == "miniworld" and suite("miniworld224/plain/x") == "miniworld224"
    assert suite("folder/photos") == "folder/photos" and suite("cifar10") == "benchmark"


def test_same_path_other_weights_are_two_rows_and_suites_are_never_averaged_together():
    cells = [
        _cell("aaaaaaaa11", "miniworld/plain/shape/seen", 0.9, 0.5),
        _cell("aaaaaaaa11", "miniworld/plain/color/seen", 0.7, 0.3),
        _cell("aaaaaaaa11", "folder/photos", 0.1, 0.0),
        _cell("bbbbbbbb22", "miniworld/plain/shape/seen", 0.2, 0.1),  # the folder now holds other weights
    ]
    avg = averages(cells)
    old, new = "runs/finetune/tga-zsr/final @aaaaaaaa", "runs/finetune/tga-zsr/final @bbbbbbbb"
    assert avg[f"{old} | PGD-2 eps=4/255 | miniworld"] == {"clean": 0.8, "robust": 0.4}  # not (0.9 + 0.7 + 0.1) / 3
    assert avg[f"{old} | PGD-2 eps=4/255 | folder/photos"] == {"clean": 0.1, "robust": 0.0}
    assert avg[f"{new} | PGD-2 eps=4/255 | miniworld"]["clean"] == 0.2
    table = markdown(cells)
    assert "| Method | miniworld/plain/shape/seen | miniworld/plain/color/seen | Average (miniworld) | folder/photos |" in table
    assert f"| {old} | 90.00 | 70.00 | 80.00 | 10.00 |" in table and f"| {new} | 20.00 | - | 20.00 | - |" in table
    assert "| Average |" not in table
