"""Real TorchServe with a mini-world archive: raw and multipart requests, JSON contract, metrics.

Skips only where Java (needed by TorchServe's frontend) is missing.
"""

from __future__ import annotations

import json
import shutil
import socket
from concurrent.futures import ThreadPoolExecutor

import pytest

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("java") is None, reason="TorchServe needs Java 17+ on PATH; java not found"),
]
requests = pytest.importorskip("requests")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve_config(**kw):
    """Free ports for all five TorchServe listeners (HTTP inference/management/metrics, gRPC x2)."""
    from clipshield.handlers.torchserve.launcher import ServeConfig

    p = [_free_port() for _ in range(5)]
    return ServeConfig(
        inference_address=f"http://127.0.0.1:{p[0]}",
        management_address=f"http://127.0.0.1:{p[1]}",
        metrics_address=f"http://127.0.0.1:{p[2]}",
        grpc_inference_port=p[3],
        grpc_management_port=p[4],
        workers=1,
        **kw,
    )


def unfitted_score():
    """An attack-score calibration with made-up parameters: the HTTP contract, not the fit, is under test here."""
    from clipshield.service.attack_score_config import AttackScoreConfig, ScoreParams
    from clipshield.service.card import AttackScoreCalibration

    params = ScoreParams(
        signals=("anchor", "margin", "median", "bits"),
        mean=(0.5, 5.0, 0.05, 0.02),
        std=(0.1, 3.0, 0.02, 0.01),
        weights=(-0.1, -0.4, 0.5, 0.2),
        bias=0.0,
        threshold=0.9,
        target_fpr=0.05,
        dataset="test: not fitted",
        n_calibration=1,
    )
    return AttackScoreCalibration(config=AttackScoreConfig(signals=params.signals), params=params, attack="none")


@pytest.fixture(scope="module")
def server(miniworld_model, tmp_path_factory):
    from clipshield.export import export_model
    from clipshield.handlers.torchserve.archive import BatchingConfig, build_archive
    from clipshield.handlers.torchserve.launcher import start_server, stop_server

    root = tmp_path_factory.mktemp("ts")
    from clipshield.service.bundle import AccuracyEntry

    card_acc = [AccuracyEntry(dataset="miniworld/plain/color_shape/seen", attack="none", purified=False, value=0.75, n=8)]
    from clipshield.export.exporter import ExportMeasurements
    from clipshield.service.card import PurifyDefaults

    measured = ExportMeasurements(
        accuracy=tuple(card_acc), purify=PurifyDefaults(enabled=True, chosen_by="test: on by default"), attack_score=unfitted_score()
    )
    bundle = export_model(miniworld_model, root / "export", version="0.9", measured=measured)
    store = root / "model_store"
    build_archive(bundle, store, batching=BatchingConfig(min_workers=1, max_workers=1, max_batch_delay_ms=50))
    handle = start_server(store, _serve_config())
    yield handle
    assert stop_server(store)


@pytest.fixture(scope="module")
def pngs():
    from clipshield.datasets.registry import DatasetRequest, build_dataset
    from clipshield.service.preprocess import encode_png

    ds = build_dataset("miniworld/plain/color_shape/seen", DatasetRequest(limit=4))
    return [encode_png(img.numpy()) for img in ds.images()], [ds.classnames[i] for i in ds.labels]


def _url(server) -> str:
    return server.config.inference_address + "/predictions/clipshield"


def _auth(server) -> dict:
    return {"Authorization": f"Bearer {server.keys()['inference']}"}


def test_raw_png_contract(server, pngs):
    images, _ = pngs
    r = requests.post(_url(server), data=images[0], headers={"Content-Type": "image/png", **_auth(server)}, timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"predictions", "purified", "anchor_score", "prediction_shift", "flipped", "flagged", "model", "attack_score"}
    assert body["attack_score"] is None  # off by default (serving config), not asked for
    assert body["flagged"] is False  # the card's detector has squeezers: it runs only when asked (issue 24)
    assert body["model"]["version"] == "0.9" and body["model"]["name"]
    scores = [p["score"] for p in body["predictions"]]
    assert len(scores) == 5 and scores == sorted(scores, reverse=True)
    assert body["purified"] is True and 0 < body["prediction_shift"] <= 1
    assert isinstance(body["flipped"], bool) and isinstance(body["flagged"], bool) and -1 <= body["anchor_score"] <= 1


def test_multipart_with_labels(server, pngs):
    images, truth = pngs
    labels = sorted({truth[0], "green star", "orange heart"})
    files = {"image": ("x.png", images[0], "image/png")}
    data = {"labels": json.dumps(labels), "purify": "false", "top_k": "2"}
    r = requests.post(_url(server), files=files, data=data, headers=_auth(server), timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["purified"] is False and body["prediction_shift"] == 0.0
    assert len(body["predictions"]) == 2 and {p["label"] for p in body["predictions"]} <= set(labels)


def test_bad_item_gets_own_status_in_batch(server, pngs):
    images, _ = pngs
    headers = {"Content-Type": "image/png", **_auth(server)}
    bodies = [images[1], b"\x89PNG\r\n\x1a\nbroken", images[2], images[3]]
    with ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(lambda b: requests.post(_url(server), data=b, headers=headers, timeout=30), bodies))
    assert [r.status_code for r in responses] == [200, 400, 200, 200]
    assert responses[1].json()["type"] == "BadInput"
    r = requests.post(_url(server), data=b"hello", headers={"Content-Type": "text/plain", **_auth(server)}, timeout=30)
    assert r.status_code == 415


def test_token_required_and_ping(server):
    from clipshield.handlers.torchserve.launcher import ping

    r = requests.post(_url(server), data=b"x", headers={"Content-Type": "image/png"}, timeout=30)
    assert r.status_code in (400, 401)
    assert ping(server.config.inference_address, server.state_dir)


def test_attack_score_on_request(server, pngs):
    images, _ = pngs
    files = {"image": ("x.png", images[0], "image/png")}
    body = requests.post(_url(server), files=files, data={"attack_score": "true"}, headers=_auth(server), timeout=30).json()
    score = body["attack_score"]
    assert set(score) == {"score", "threshold", "flagged"} and score["threshold"] == 0.9
    assert score["flagged"] is (score["score"] > 0.9) and body["flagged"] is score["flagged"]  # one detector
    again = requests.post(_url(server), files=files, data={"attack_score": "true"}, headers=_auth(server), timeout=30).json()
    assert again["attack_score"] == score  # noise seeded by the image: the same answer every time
    off = requests.post(_url(server), files=files, data={"attack_score": "false"}, headers=_auth(server), timeout=30).json()
    assert off["attack_score"] is None


def test_metrics_endpoint_has_clipshield_metrics(server, pngs):
    images, _ = pngs
    requests.post(_url(server), data=images[0], headers={"Content-Type": "image/png", **_auth(server)}, timeout=30)
    requests.post(
        _url(server), files={"image": ("x.png", images[0], "image/png")}, data={"attack_score": "true"}, headers=_auth(server), timeout=30
    )
    text = requests.get(server.config.metrics_address + "/metrics", timeout=10).text
    lines = [line for line in text.splitlines() if line.startswith("clipshield_")]
    names = {line.split("{")[0] for line in lines}
    for expected in (
        "clipshield_requests_total",
        "clipshield_decode_seconds_count",
        "clipshield_encode_seconds_count",
        "clipshield_purify_seconds_count",
        "clipshield_head_seconds_count",
        "clipshield_prediction_shift_count",
        "clipshield_anchor_score_count",
        "clipshield_attack_score_count",
        "clipshield_attack_score_seconds_count",
    ):
        assert expected in names, sorted(names)
    assert any('outcome="ok"' in line for line in lines if line.startswith("clipshield_requests_total"))
    gauges = [line for line in lines if line.startswith("clipshield_model_accuracy{")]
    assert any('attack="none"' in line and line.endswith(" 0.75") for line in gauges), gauges


def test_serving_client(server, pngs):
    from clipshield.handlers.client import ServingClient

    images, truth = pngs
    client = ServingClient(server)
    status, body = client.predict(images[1], labels=[truth[1], "green star"], purify=True, top_k=1)
    assert status == 200 and body["purified"] is True and len(body["predictions"]) == 1
    status, body = client.predict(b"GIF89a....")
    assert status == 415 and body["type"] == "UnsupportedMediaType"
    assert any(line.startswith("clipshield_requests_total") for line in client.metrics())


def test_serving_demo_end_to_end(miniworld_model, tmp_path):
    from clipshield.export.demo_serving import serving_demo

    cfg = _serve_config()
    lines: list[str] = []
    result = serving_demo(miniworld_model, tmp_path, tmp_path / "store", lines.append, n_images=2, once=True, serve=cfg)
    assert len(result["answers"]) == 8  # 2 images x (clean, attacked) x (purify off, on)
    assert {(a["input"], a["purify"]) for a in result["answers"]} == {(k, p) for k in ("clean", "attacked") for p in (False, True)}
    assert not any(a["label"].startswith("HTTP") for a in result["answers"])
    clean_off = [a for a in result["answers"] if a["input"] == "clean" and not a["purify"]]
    assert sum(a["label"] == a["truth"] for a in clean_off) >= 1  # the shipped model is ~98 % right on clean images
    assert any(line.startswith("clipshield_requests_total") and line.endswith(" 8.0") for line in result["metrics"])
    assert lines[-1].strip() == "TorchServe stopped (--once)."
    assert not (tmp_path / "store" / ".server" / "server.json").exists()


def test_describe_answers_the_model_card(server):
    """`GET /models/clipshield?customized=true` (management API) returns the served card, accuracies included."""
    r = requests.get(
        server.config.management_address + "/models/clipshield?customized=true",
        headers={"Authorization": f"Bearer {server.keys()['management']}"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    card = r.json()[0]["customizedMetadata"]["model"]  # TorchServe embeds the handler's JSON answer as an object
    assert card["source"] == "export" and card["version"] == "0.9" and card["purify"]["chosen_by"] == "test: on by default"
    assert [(a["dataset"], a["attack"], a["value"]) for a in card["accuracy"]] == [("miniworld/plain/color_shape/seen", "none", 0.75)]
    assert card["attack_score"]["params"]["dataset"] == "test: not fitted"
    assert not {"purify_sweep", "flag", "training"} & set(card) and card["provenance"]["git_commit"]  # unmeasured: absent
