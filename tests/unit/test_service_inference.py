"""The ORT inference pipeline: per-sample purification, batch independence, per-item errors, labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clipshield.models.purify import PurifyConfig, purify_embeddings
from clipshield.service.errors import BadInput, UnsupportedMediaType
from clipshield.service.inference import ClipshieldService, RawRequest
from clipshield.service.metrics import RecordingSink
from clipshield.service.preprocess import encode_png
from clipshield.service.purify_np import logits, purify


@pytest.mark.parametrize("steps, step_size", [(1, 0.1), (3, 0.3), (10, 30.0)])
def test_numpy_purify_matches_torch_per_sample(steps, step_size):
    gen = torch.Generator().manual_seed(steps)
    e = torch.nn.functional.normalize(torch.randn(8, 64, generator=gen), dim=-1)
    a = torch.randn(64, generator=gen) * 0.3
    ref = purify_embeddings(e, a, PurifyConfig(steps=steps, step_size=step_size, mode="per_sample")).numpy()
    ours = purify(e.numpy(), a.numpy(), steps, step_size)
    # arctan(30) ~ 88 degree steps overshoot and amplify rounding: looser bound there
    np.testing.assert_allclose(ours, ref, atol=1e-4 if step_size > 1 else 1e-6)


def test_numpy_purify_and_head_are_batch_independent():
    rng = np.random.default_rng(0)
    e = rng.standard_normal((8, 64)).astype(np.float32)
    head = rng.standard_normal((10, 64)).astype(np.float32)
    head /= np.linalg.norm(head, axis=1, keepdims=True)
    a = rng.standard_normal(64).astype(np.float32)
    batch = logits(purify(e, a, 2, 0.2), head, 50.0)
    single = np.concatenate([logits(purify(e[i : i + 1], a, 2, 0.2), head, 50.0) for i in range(8)])
    assert np.array_equal(batch, single)


@pytest.fixture(scope="module")
def service(miniworld_model, tmp_path_factory):
    from clipshield.export import export_model
    from clipshield.export.exporter import ExportMeasurements
    from clipshield.service.card import PurifyDefaults

    on = ExportMeasurements(purify=PurifyDefaults(enabled=True, chosen_by="test: on by default"))
    folder = export_model(miniworld_model, tmp_path_factory.mktemp("bundle"), measured=on)
    return ClipshieldService.from_folder(folder, metrics=RecordingSink())


@pytest.fixture(scope="module")
def pngs():
    from clipshield.datasets.registry import DatasetRequest, build_dataset

    ds = build_dataset("miniworld/plain/color_shape/seen", DatasetRequest(limit=8))
    return [encode_png(img.numpy()) for img in ds.images()]


def test_batch_of_8_equals_one_at_a_time(service, pngs):
    reqs = [RawRequest({"body": p}, "image/png") for p in pngs[:4]]
    reqs += [RawRequest({"image": p, "purify": b"true", "top_k": b"3"}, "multipart/form-data") for p in pngs[4:]]
    batch = service.predict(reqs)
    single = [service.predict([r])[0] for r in reqs]
    assert all(b.purified for b in batch)
    for b, s in zip(batch, single):
        assert [p.label for p in b.predictions] == [p.label for p in s.predictions]
        assert b.flipped == s.flipped and b.flagged == s.flagged
        np.testing.assert_allclose([p.score for p in b.predictions], [p.score for p in s.predictions], atol=1e-6)
        assert b.prediction_shift == pytest.approx(s.prediction_shift, abs=1e-6)


def test_bad_item_does_not_fail_batch_mates(service, pngs):
    reqs = [
        RawRequest({"body": pngs[0]}, "image/png"),
        RawRequest({"body": b"\x89PNG\r\n\x1a\ntruncated"}, "image/png"),
        RawRequest({"body": pngs[1]}, "text/plain"),
        RawRequest({"image": pngs[2], "top_k": b"-1"}, "multipart/form-data"),
        RawRequest({"body": pngs[3]}, "image/jpeg"),
    ]
    out = service.predict(reqs)
    assert len(out) == 5
    assert isinstance(out[1], BadInput) and out[1].http_status == 400
    assert isinstance(out[2], UnsupportedMediaType)
    assert isinstance(out[3], BadInput)
    assert out[0].predictions and out[4].predictions
    assert service.metrics.count("clipshield_requests_total", {"outcome": "bad_input"}) >= 2


def test_purify_off_and_custom_labels(service, miniworld_model, pngs):
    from clipshield.models.zero_shot import build_text_head

    labels = ["red circle", "blue square", "green star"]
    res = service.predict([RawRequest({"image": pngs[0], "labels": labels, "purify": b"false", "top_k": b"10"})])[0]
    assert not res.purified and res.prediction_shift == 0.0 and not res.flipped
    assert sorted(p.label for p in res.predictions) == sorted(labels)
    scores = [p.score for p in res.predictions]
    assert scores == sorted(scores, reverse=True) and sum(scores) == pytest.approx(1.0, abs=1e-5)
    ref = build_text_head(miniworld_model, labels, list(service.labels.templates)).numpy()
    np.testing.assert_allclose(service.head_for(labels)[1], ref, atol=1e-4)
    assert len(service.heads) >= 1


def test_default_head_and_zero_shot_match_torch(service, miniworld_model, pngs):
    from clipshield.models.zero_shot import ZeroShotClassifier
    from clipshield.service.preprocess import load_pixels

    res = service.predict([RawRequest({"image": pngs[5], "purify": b"false", "top_k": b"1"})])[0]
    x = torch.from_numpy(load_pixels(pngs[5], miniworld_model.record.preprocess, service.config.decode))[None]
    clf = ZeroShotClassifier(miniworld_model, torch.from_numpy(service.head))
    with torch.no_grad():
        probs = clf(x).softmax(-1)[0]
    top = int(probs.argmax())
    assert res.predictions[0].label == service.labels.classnames[top]
    assert res.predictions[0].score == pytest.approx(float(probs[top]), abs=1e-4)


def test_a_failing_encoder_fails_its_batch_only_and_is_counted(service, pngs, monkeypatch):
    """An exception inside the image encoder answers every item of that batch with an internal error
    (no traceback to the caller, outcome counted), and the next batch is served normally."""

    def broken(_pixels: np.ndarray) -> np.ndarray:
        raise RuntimeError("device lost")

    errors_before = sum(v for (name, labels), v in service.metrics.counters.items() if name == "clipshield_requests_total")
    monkeypatch.setattr(service, "image_encoder", broken)
    failed = service.predict([RawRequest({"body": p}, "image/png") for p in pngs[:3]])
    assert [str(r) for r in failed] == ["internal error in the image encoder (RuntimeError)"] * 3
    counted = sum(v for (name, labels), v in service.metrics.counters.items() if name == "clipshield_requests_total")
    assert counted - errors_before == 3
    monkeypatch.undo()
    ok = service.predict([RawRequest({"body": pngs[0]}, "image/png")])[0]
    assert not isinstance(ok, Exception) and ok.predictions
