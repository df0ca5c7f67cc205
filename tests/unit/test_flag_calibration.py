"""Adversarial-input flag: threshold at a target false-positive rate, AUROC, served `flagged` (issue 7)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clipshield.export.flag_calibration import FlagCalibrationConfig, auroc, calibrate_flag, flag_rate, threshold_at_fpr


@pytest.mark.parametrize("target", [0.01, 0.05, 0.2])
def test_threshold_meets_target_fpr(target):
    scores = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    t = threshold_at_fpr(scores, target)
    assert flag_rate(scores, t) <= target
    assert flag_rate(scores, t + 1e-3) > target - 2 / len(scores)  # the largest such threshold


def test_auroc_extremes_and_chance():
    neg, pos = torch.zeros(50), torch.ones(50)
    assert auroc(neg, pos) == 1.0 and auroc(pos, neg) == 0.0 and auroc(neg, neg) == 0.5


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """PGD on a shared 2-core host: one intra-op thread is several times faster than two under load."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def flagged_service(miniworld_model, tmp_path_factory):
    from clipshield.export import export_model
    from clipshield.service.inference import ClipshieldService

    cfg = FlagCalibrationConfig(n_calibration=128, n_eval=48, attacks=((16, 10),), extra_clean=())
    flag = calibrate_flag(miniworld_model, cfg)
    from clipshield.export.exporter import ExportMeasurements

    folder = export_model(miniworld_model, tmp_path_factory.mktemp("flag") / "export", measured=ExportMeasurements(flag=flag))
    return ClipshieldService.from_folder(folder), cfg


def test_model_card_records_calibration(flagged_service):
    service, cfg = flagged_service
    flag = service.card.flag
    assert flag is not None and flag.target_fpr == cfg.target_fpr and -1 < flag.anchor_below < 1
    by_attack = {r.attack: r for r in flag.rates}
    assert by_attack["none"].flag_rate <= 3 * cfg.target_fpr  # held-out clean false positives near the target
    assert by_attack["pgd10-linf-16/255"].auroc > 0.75


def test_strong_attack_flagged_above_calibrated_rate(flagged_service, miniworld_model):
    """PGD-10 at 16/255 against the served classifier, sent as PNGs: flagged far more often than clean."""
    from clipshield.attacks.pgd import PGD
    from clipshield.datasets.registry import DatasetRequest, build_dataset
    from clipshield.models.zero_shot import ZeroShotClassifier, build_text_head
    from clipshield.service.inference import RawRequest
    from clipshield.service.preprocess import encode_png

    service, cfg = flagged_service
    ds = build_dataset(cfg.dataset, DatasetRequest(limit=cfg.n_calibration + 48))
    x, y = ds.images()[cfg.n_calibration :], torch.tensor(ds.labels[cfg.n_calibration :])  # not used for calibration
    clf = ZeroShotClassifier(miniworld_model, build_text_head(miniworld_model, ds.classnames, ds.templates))
    adv = PGD(clf, eps=16 / 255, steps=10, generator=torch.Generator().manual_seed(1))(x, y)

    def rate(images):
        results = service.predict([RawRequest({"body": encode_png(img.numpy())}, "image/png") for img in images])
        return float(np.mean([r.flagged for r in results]))

    clean_rate, adv_rate = rate(x), rate(adv)
    assert clean_rate <= 3 * cfg.target_fpr
    assert adv_rate >= max(4 * cfg.target_fpr, clean_rate + 0.3), (clean_rate, adv_rate)


def test_cli_export_calibrates_flag(tmp_path, capsys):
    import json

    from clipshield.cli.main import main

    out = tmp_path / "export"
    assert main(["export", "--out", str(out), "--calibrate-flag", "32", "--flag-fpr", "0.1", "--threads", "1"]) == 0
    card = json.loads((out / "model_card.json").read_text())
    assert card["flag"]["target_fpr"] == 0.1 and card["flag"]["n_calibration"] == 32
    assert {r["attack"] for r in card["flag"]["rates"]} >= {"none", "pgd10-linf-4/255", "pgd10-linf-16/255"}
    assert "AUROC" in capsys.readouterr().out
