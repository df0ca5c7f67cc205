"""ONNX export of the mini-world model: parity with PyTorch at batch 1 and 8, bundle and archive."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from clipshield.service import bundle as B
from clipshield.service.errors import ModelLoadError
from clipshield.service.runtime import image_encoder, text_encoder
from clipshield.service.settings import RuntimeConfig


@pytest.fixture(scope="module")
def exported(miniworld_model, tmp_path_factory):
    from clipshield.export import export_model

    return export_model(miniworld_model, tmp_path_factory.mktemp("export"))


@pytest.mark.parametrize("batch", [1, 8])
def test_image_encoder_parity(miniworld_model, exported, batch):
    x = torch.rand(batch, 3, miniworld_model.image_size, miniworld_model.image_size, generator=torch.Generator().manual_seed(batch))
    enc = image_encoder(exported / B.IMAGE_ONNX, RuntimeConfig())
    ours = enc(x.numpy())
    with torch.no_grad():
        ref = miniworld_model(x).numpy()
    assert ours.shape == ref.shape == (batch, ref.shape[1])
    assert np.abs(ours - ref).max() <= 1e-4


def test_text_encoder_parity(miniworld_model, exported):
    tokens = miniworld_model.tokenize(["a photo of a red circle", "a photo of a .", "an outlined blue star"] * 3)
    ours = text_encoder(exported / B.TEXT_ONNX, RuntimeConfig())(tokens.numpy())
    with torch.no_grad():
        ref = miniworld_model.encode_text(tokens, normalize=True).numpy()
    assert ours.shape == (9, ref.shape[1])
    assert np.abs(ours - ref).max() <= 1e-4


def test_model_card_records_parity_and_head(miniworld_model, exported):
    card = B.read_card(exported)
    assert card.parity is not None and card.parity.tolerance == 1e-4
    assert max(card.parity.image_batch_1, card.parity.image_batch_8, card.parity.text) <= 1e-4
    assert card.logit_scale == pytest.approx(miniworld_model.logit_scale, rel=1e-6)
    labels = B.LabelSet.model_validate_json((exported / B.LABELS).read_text())
    head = np.load(exported / B.TEXT_HEAD)
    assert head.shape == (len(labels.classnames), card.embed_dim)
    np.testing.assert_allclose(np.linalg.norm(head, axis=1), 1.0, atol=1e-5)


def test_manifest_detects_tampering(exported, tmp_path):
    import shutil

    copy = tmp_path / "bundle"
    shutil.copytree(exported, copy)
    assert B.IMAGE_ONNX in B.verify_manifest(copy)
    anchor = np.load(copy / B.ANCHOR)
    np.save(copy / B.ANCHOR, anchor + 1e-3)
    with pytest.raises(ModelLoadError, match=r"sha256 mismatch for anchor\.npy"):
        B.verify_manifest(copy)
    (copy / B.MANIFEST).unlink()
    with pytest.raises(ModelLoadError, match="missing"):
        B.verify_manifest(copy)


def test_archive_no_archive_format(exported, tmp_path):
    from clipshield.handlers.torchserve.archive import DEFAULT_BATCH_SIZE, DEFAULT_MAX_BATCH_DELAY_MS, build_archive

    path = build_archive(exported, tmp_path / "store", name="mw", archive_format="no-archive")
    assert path == tmp_path / "store" / "mw"
    manifest = json.loads((path / "MAR-INF" / "MANIFEST.json").read_text())
    assert manifest["model"]["handler"] == "clipshield_handler.py"
    assert manifest["model"]["modelName"] == "mw"
    files = B.verify_manifest(path)
    assert {"serving.json", B.IMAGE_ONNX, B.TEXT_ONNX, B.ANCHOR, B.MODEL_CARD} <= set(files)
    config = (path / "model-config.yaml").read_text()  # the measured defaults (docs/serving.md, "Batching by measurement")
    assert f"batchSize: {DEFAULT_BATCH_SIZE}\n" in config and f"maxBatchDelay: {DEFAULT_MAX_BATCH_DELAY_MS}\n" in config


def test_archive_mar_format(exported, tmp_path):
    import zipfile

    from clipshield.handlers.torchserve.archive import build_archive

    path = build_archive(exported, tmp_path / "store", archive_format="zip-store")
    assert path.name == "clipshield.mar"
    with zipfile.ZipFile(path) as zf:
        names = set(zf.namelist())
        assert {B.IMAGE_ONNX, B.MANIFEST, "clipshield_handler.py", "MAR-INF/MANIFEST.json"} <= names
        assert all(i.compress_type == zipfile.ZIP_STORED for i in zf.infolist())


def test_cli_export_archive_and_serve_errors(tmp_path, capsys, miniworld_model):
    from clipshield.cli.main import main

    out = tmp_path / "export"
    assert main(["export", "--out", str(out), "--version", "2.0", "--no-purify", "--threads", "1"]) == 0
    assert "ONNX parity" in capsys.readouterr().out
    card = B.read_card(out)
    assert card.version == "2.0" and card.purify.enabled is False
    store = tmp_path / "store"
    assert main(["archive", "--export", str(out), "--model-store", str(store), "--format", "no-archive", "--threads", "2"]) == 0
    assert json.loads((store / "clipshield" / "serving.json").read_text())["runtime"]["intra_op_threads"] == 2
    assert main(["serve", "--model-store", str(tmp_path / "empty"), "--name", "nothing"]) == 2
    assert "run `clipshield archive` first" in capsys.readouterr().err
    assert main(["serve", "--stop", "--model-store", str(store)]) == 0
    assert "no TorchServe running" in capsys.readouterr().out


def test_purify_default_choice_rule():
    from clipshield.export.purify_calibration import SweepConfig, SweepRow, _choose

    cfg = SweepConfig()
    rows = [SweepRow(steps=1, step_size=0.1, clean=0.95, robust_bpda=0.30), SweepRow(steps=2, step_size=0.5, clean=0.80, robust_bpda=0.60)]
    gained = _choose(cfg, 0.96, 0.20, rows, 256)
    assert (gained.chosen.steps, gained.chosen.step_size, gained.chosen.enabled) == (1, 0.1, True)
    assert not gained.notes  # the 0.60 row loses too much clean accuracy to be eligible
    assert {(a.attack, a.purified) for a in gained.accuracy} >= {("none", False), ("bpda-pgd10-linf-4/255", True)}
    assert gained.sweep.gain and [r.eligible for r in gained.sweep.rows] == [True, False]


def test_purify_no_gain_turns_purification_off_and_never_picks_the_overshoot():
    from clipshield.export.purify_calibration import SweepConfig, SweepRow, _choose, overshoots

    cfg = SweepConfig()
    rows = [
        SweepRow(steps=10, step_size=30.0, clean=0.96, robust_bpda=0.29),  # ~881 degrees: a near no-op
        SweepRow(steps=2, step_size=0.2, clean=0.95, robust_bpda=0.31),
        SweepRow(steps=1, step_size=0.2, clean=0.95, robust_bpda=0.30),
        SweepRow(steps=2, step_size=0.5, clean=0.80, robust_bpda=0.60),
    ]
    flat = _choose(cfg, 0.96, 0.29, rows, 256)
    assert overshoots(10, 30.0) and not overshoots(2, 0.5)
    assert flat.chosen.enabled is False and (flat.chosen.steps, flat.chosen.step_size) == (1, 0.2)  # cheapest eligible
    assert "no robustness gain" in flat.chosen.chosen_by and "buys no robustness" in flat.notes[0]
    assert [r.eligible for r in flat.sweep.rows] == [False, True, True, False] and not flat.sweep.gain
    assert {(a.attack, a.purified) for a in flat.accuracy} == {("none", False), ("pgd10-linf-4/255", False)}
    only_overshoot = _choose(cfg, 0.96, 0.10, rows[:1], 256)  # even a "gain" by the overshoot is not eligible
    assert only_overshoot.chosen.enabled is False and only_overshoot.chosen.steps == 0


def test_unmeasured_card_claims_no_measurement(exported):
    card = B.read_card(exported)
    assert card.purify.enabled is False and card.purify.chosen_by.startswith("not measured")
    assert card.purify_sweep is None and card.attack_score is None and card.training is None and card.accuracy == ()
    assert card.source == "export" and card.provenance.git_commit and card.weights_digest


def test_attack_labels_are_one_spelling():
    from clipshield.service.card import CLEAN, attack_label

    assert attack_label("pgd", 4 / 255, 10) == "pgd10-linf-4/255"
    assert attack_label("pgd", 4 / 255, 10, via="bpda") == "bpda-pgd10-linf-4/255"
    assert attack_label("pgd", 0.5 / 255, 100) == "pgd100-linf-0.5/255"
    assert attack_label("pgd", 0.0, 10) == attack_label("pgd", 4 / 255, 0) == CLEAN == "none"


def test_bundle_with_other_tokenizer_vocab_refused(exported, tmp_path):
    import gzip
    import shutil

    from clipshield.service.inference import ClipshieldService
    from clipshield.service.tokenizer import open_clip_vocab

    copy = tmp_path / "bundle"
    shutil.copytree(exported, copy)
    assert (copy / B.TOKENIZER_VOCAB).read_bytes() == open_clip_vocab().read_bytes()
    (copy / B.TOKENIZER_VOCAB).write_bytes(gzip.compress(b"#version: 0.2\na b\n"))
    B.write_manifest(copy)  # consistent checksums: only the vocabulary check can catch it
    with pytest.raises(ModelLoadError, match="tokenizer vocabulary differs"):
        ClipshieldService.from_folder(copy)
    (copy / B.TOKENIZER_VOCAB).unlink()
    B.write_manifest(copy)
    with pytest.raises(ModelLoadError, match=r"tokenizer vocabulary.* is missing"):
        ClipshieldService.from_folder(copy)
