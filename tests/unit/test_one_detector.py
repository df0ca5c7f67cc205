"""One adversarial-input detector (issue 24): `flagged` is the model card's attack score. The anchor-only score
from the one calibrator, served on every request; the removed `--calibrate-flag`; format-1 cards and bundles
whose `flag` section is converted to the same decisions."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from clipshield.service import bundle as B
from clipshield.service.bundle_info import BUNDLE_INFO, FORMAT_VERSION
from clipshield.service.card import ModelCard, read_card_file


@pytest.fixture(scope="module")
def anchor_bundle(tmp_path_factory):
    """The anchor-only detector from the one calibrator: 64 clean + 64 PGD-10 16/255 images, threshold at 10 %."""
    from clipshield.cli.main import main

    out = tmp_path_factory.mktemp("anchor") / "export"
    argv = ["export", "--out", str(out), "--calibrate-score", "64", "--score-signals", "anchor", "--score-eps", "16"]
    assert main([*argv, "--score-fpr", "0.1", "--score-threshold-images", "0", "--threads", "1"]) == 0
    return out


def _pngs(images) -> list:
    from clipshield.service.inference import RawRequest
    from clipshield.service.preprocess import encode_png

    return [RawRequest({"body": encode_png(img.numpy())}, "image/png") for img in images]


def test_the_calibrator_writes_one_anchor_only_detector(anchor_bundle):
    raw = json.loads((anchor_bundle / B.MODEL_CARD).read_text())
    assert "flag" not in raw and raw["schema_version"] == 3
    assert json.loads((anchor_bundle / BUNDLE_INFO).read_text())["format_version"] == FORMAT_VERSION == 2
    cal = read_card_file(anchor_bundle / B.MODEL_CARD).attack_score
    assert cal is not None and cal.params.signals == ("anchor",) and cal.config.is_free
    clean, attacked = cal.rates
    assert clean.attack == "none" and clean.flag_rate <= 0.3
    assert attacked.attack == "pgd10-linf-16/255" and attacked.auroc is not None and attacked.auroc > 0.75
    assert cal.params.weights[0] < 0  # attacked images sit further from the blank anchor: a lower cosine scores higher


def test_anchor_only_detector_flags_every_request_without_asking(anchor_bundle):
    from clipshield.datasets.registry import DatasetRequest, build_dataset
    from clipshield.service.inference import ClipshieldService
    from clipshield.service.metrics import RecordingSink

    sink = RecordingSink()
    service = ClipshieldService.from_folder(anchor_bundle, metrics=sink)
    images = build_dataset("miniworld/plain/color_shape/seen", DatasetRequest(limit=24)).images()
    results = service.predict(_pngs(images))
    p = service.card.attack_score.params
    by_rule = [((r.anchor_score - p.mean[0]) / p.std[0]) * p.weights[0] + p.bias > p.threshold for r in results]
    assert [r.flagged for r in results] == by_rule  # the one-signal score is a monotone map of the served anchor_score
    assert all(r.attack_score is None for r in results)  # decided on every request, reported only when asked
    assert len(sink.observations[("clipshield_attack_score", ())]) == len(results)
    assert sink.count("clipshield_flagged_total") == sum(by_rule)


def test_served_anchor_only_score_matches_the_torch_scorer(anchor_bundle, miniworld_model):
    """The served NumPy score (ONNX encoder) and the PyTorch `AttackScorer` the calibrator fitted agree on the
    same decoded pixels, and so do their decisions."""
    from clipshield.datasets.registry import DatasetRequest, build_dataset
    from clipshield.models.attack_score import AttackScorer, SignalExtractor
    from clipshield.models.zero_shot import ZeroShotClassifier
    from clipshield.service.inference import ClipshieldService, RawRequest
    from clipshield.service.preprocess import encode_png, load_pixels

    service = ClipshieldService.from_folder(anchor_bundle)
    cal = service.card.attack_score
    images = build_dataset("miniworld/plain/color_shape/seen", DatasetRequest(limit=144)).images()[128:]  # none set the threshold
    pngs = [encode_png(img.numpy()) for img in images]
    served = service.predict([RawRequest({"image": png, "attack_score": "true"}, None) for png in pngs])
    pixels = torch.from_numpy(np.stack([load_pixels(png, service.record.preprocess, service.config.decode) for png in pngs]))
    clf = ZeroShotClassifier(miniworld_model, torch.from_numpy(service.head)).eval()
    scorer = AttackScorer(SignalExtractor(clf, torch.from_numpy(service.anchor), cal.config), cal.params)
    with torch.no_grad():
        torch_scores = scorer(pixels)
    np.testing.assert_allclose([r.attack_score.score for r in served], torch_scores.numpy(), rtol=0, atol=1e-4)
    assert [r.flagged for r in served] == scorer.flag(torch_scores).tolist()


def test_strong_attack_flagged_above_calibrated_rate(anchor_bundle, miniworld_model):
    """PGD-10 at 16/255 against the served classifier, sent as PNGs: flagged far more often than clean."""
    from clipshield.attacks.pgd import PGD
    from clipshield.datasets.registry import DatasetRequest, build_dataset
    from clipshield.models.zero_shot import ZeroShotClassifier, build_text_head
    from clipshield.service.inference import ClipshieldService

    service = ClipshieldService.from_folder(anchor_bundle)
    ds = build_dataset("miniworld/plain/color_shape/seen", DatasetRequest(limit=128 + 48))
    x, y = ds.images()[128:], torch.tensor(ds.labels[128:])  # after the fit and held-out images
    clf = ZeroShotClassifier(miniworld_model, build_text_head(miniworld_model, ds.classnames, ds.templates))
    adv = PGD(clf, eps=16 / 255, steps=10, generator=torch.Generator().manual_seed(1))(x, y)
    clean_rate, adv_rate = (float(np.mean([r.flagged for r in service.predict(_pngs(imgs))])) for imgs in (x, adv))
    assert clean_rate <= 0.3
    assert adv_rate >= max(0.4, clean_rate + 0.3), (clean_rate, adv_rate)


def test_removed_calibrate_flag_is_a_one_line_error(capsys):
    from clipshield.cli.main import main

    assert main(["export", "--out", "unused", "--calibrate-flag", "32"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--calibrate-score N --score-signals anchor" in err


LEGACY_FLAG = {
    "score": "anchor_score",
    "anchor_below": 0.5,
    "target_fpr": 0.05,
    "dataset": "miniworld/plain/color_shape/seen",
    "n_calibration": 256,
    "rates": [{"attack": "none", "flag_rate": 0.03, "n": 256}, {"attack": "pgd10-linf-4/255", "flag_rate": 0.29, "auroc": 0.61, "n": 256}],
}


def _legacy_bundle(anchor_bundle, folder, flag: dict, keep_score: bool = False):
    """A format-1 bundle: the exported one with the schema-2 card's `flag` section (and no attack score unless kept)."""
    shutil.copytree(anchor_bundle, folder)
    card = json.loads((folder / B.MODEL_CARD).read_text())
    card.update(schema_version=2, flag=flag, attack_score=card["attack_score"] if keep_score else None)
    (folder / B.MODEL_CARD).write_text(json.dumps(card))
    info = json.loads((folder / BUNDLE_INFO).read_text())
    (folder / BUNDLE_INFO).write_text(json.dumps({**info, "format_version": 1}))
    B.write_manifest(folder)
    return folder


def test_a_format_1_bundle_loads_with_its_flag_converted_to_the_same_decisions(anchor_bundle, tmp_path):
    from clipshield.datasets.registry import DatasetRequest, build_dataset
    from clipshield.service.inference import ClipshieldService

    images = build_dataset("miniworld/plain/color_shape/seen", DatasetRequest(limit=24)).images()
    plain = ClipshieldService.from_folder(anchor_bundle).predict(_pngs(images))
    median = float(np.median([r.anchor_score for r in plain]))  # a threshold that splits these images
    service = ClipshieldService.from_folder(_legacy_bundle(anchor_bundle, tmp_path / "v1", {**LEGACY_FLAG, "anchor_below": median}))
    assert service.bundle_info.format_version == 1
    cal = service.card.attack_score
    assert cal.params.signals == ("anchor",) and cal.params.threshold == -median and "converted" in cal.notes[-1]
    results = service.predict(_pngs(images))
    assert [r.flagged for r in results] == [r.anchor_score < median for r in results]  # the old rule, exactly
    assert 0 < sum(r.flagged for r in results) < len(results)


def test_a_legacy_flag_beside_an_attack_score_gives_way_to_it(anchor_bundle, tmp_path):
    kept = read_card_file(anchor_bundle / B.MODEL_CARD).attack_score
    folder = _legacy_bundle(anchor_bundle, tmp_path / "both", LEGACY_FLAG, keep_score=True)
    card = read_card_file(folder / B.MODEL_CARD)
    assert card.attack_score == kept and "was dropped: the attack score is the one detector" in card.notes[-1] and card.schema_version == 3


def test_converted_card_round_trips_without_the_flag(anchor_bundle):
    raw = json.loads((anchor_bundle / B.MODEL_CARD).read_text())
    card = ModelCard.model_validate({**raw, "attack_score": None, "flag": LEGACY_FLAG})
    again = ModelCard.model_validate_json(card.model_dump_json())
    assert again == card and "flag" not in json.loads(card.model_dump_json())
    assert card.attack_score.rates[1].auroc == 0.61  # the flag's AUROC was on the negated cosine: the score's own


def test_a_malformed_legacy_flag_is_refused():
    with pytest.raises(ValueError, match="anchor_below"):
        ModelCard.model_validate({"flag": {**LEGACY_FLAG, "anchor_below": 3.0}})
