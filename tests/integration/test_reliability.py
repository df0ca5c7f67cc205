"""Bad-input matrix against real TorchServe (issue 7): one server for the module, many requests.

Every bad request is sent together with three good ones (server-side batching with a 100 ms
delay, one worker, so they share a batch): the bad one gets its own 4xx with a JSON body naming
the problem, its batch mates get exactly the answer they get alone, the next good request is
answered 200, and the worker process is never restarted.
"""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from . import serving_helpers as H

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("java") is None, reason="TorchServe needs Java 17+ on PATH; java not found"),
]
requests = pytest.importorskip("requests")

PNG = H.image()
JPEG = H.image(fmt="JPEG")
GOOD = [H.image(seed=s) for s in (1, 2, 3)]
RAW_PNG = {"Content-Type": "image/png"}


def _raw(data: bytes, ctype: str | None = "image/png") -> dict:
    return {"data": data, "headers": {"Content-Type": ctype} if ctype else {}}


def _form(**fields) -> dict:
    return {"files": H.form(PNG, **fields)}


# (id, request kwargs, status, error type, words the message must contain)
CASES = [
    ("empty-body", _raw(b""), 400, "BadInput", "empty"),
    ("non-image-bytes", _raw(b"hello, I am not an image"), 415, "UnsupportedMediaType", "format"),
    ("truncated-png", _raw(PNG[: len(PNG) // 2]), 400, "BadInput", "truncated"),
    ("truncated-png-header", _raw(PNG[:30]), 400, "BadInput", "PNG"),
    ("truncated-jpeg", _raw(JPEG[: len(JPEG) // 2], "image/jpeg"), 400, "BadInput", "JPEG"),
    ("wrong-content-type", _raw(PNG, "text/plain"), 415, "UnsupportedMediaType", "content type"),
    ("json-content-type", _raw(b'{"image": "x"}', "application/json"), 415, "UnsupportedMediaType", "content type"),
    ("missing-content-type-not-image", _raw(b"GIF89a not really", None), 415, "UnsupportedMediaType", "format"),
    ("gif", _raw(H.image(fmt="GIF")), 415, "UnsupportedMediaType", "format"),
    ("bmp", _raw(H.image(fmt="BMP")), 415, "UnsupportedMediaType", "format"),
    ("webp", _raw(H.image(fmt="WEBP")), 415, "UnsupportedMediaType", "format"),
    ("tiff", _raw(H.image(fmt="TIFF")), 415, "UnsupportedMediaType", "format"),
    ("decompression-bomb", _raw(H.bomb_png(20_000, 20_000)), 413, "PayloadTooLarge", "pixels"),
    ("over-size-body", _raw(b"\x89PNG\r\n\x1a\n" + bytes(9 * 1024 * 1024)), 413, "PayloadTooLarge", "bytes"),
    ("extreme-aspect-ratio", _raw(H.image(size=(2, 400))), 400, "BadInput", "aspect ratio"),
    ("labels-not-json", _form(labels="cat, dog"), 400, "BadInput", "labels"),
    ("labels-json-object", _form(labels='{"cat": 1}'), 400, "BadInput", "labels"),
    ("labels-nested", _form(labels='[["cat"]]'), 400, "BadInput", "labels"),
    ("labels-empty", _form(labels="[]"), 400, "BadInput", "at least one"),
    ("labels-blank", _form(labels='["cat", "  "]'), 400, "BadInput", "blank"),
    ("labels-duplicated", _form(labels='["cat", "cat"]'), 400, "BadInput", "distinct"),
    ("labels-thousands", _form(labels=json.dumps([f"class {i}" for i in range(5000)])), 400, "BadInput", "limit"),
    ("labels-very-long", _form(labels=json.dumps(["x" * 10_000])), 400, "BadInput", "longer"),
    ("labels-not-utf8", _form(labels=b'["\xff\xfe cat"]'), 400, "BadInput", "UTF-8"),
    ("labels-lone-surrogate", _form(labels='["\\ud800"]'), 400, "BadInput", "Unicode"),
    ("labels-control-char", _form(labels='["a\\u0000b"]'), 400, "BadInput", "control"),
    ("top_k-zero", _form(top_k="0"), 400, "BadInput", "top_k"),
    ("top_k-too-large", _form(top_k="101"), 400, "BadInput", "top_k"),
    ("top_k-negative", _form(top_k="-3"), 400, "BadInput", "top_k"),
    ("top_k-not-int", _form(top_k="2.5"), 400, "BadInput", "top_k"),
    ("top_k-huge", _form(top_k="9" * 40), 400, "BadInput", "top_k"),
    ("purify-not-bool", _form(purify="maybe"), 400, "BadInput", "purify"),
    ("attack_score-not-bool", _form(attack_score="maybe"), 400, "BadInput", "attack_score"),
    ("attack_score-without-calibration", _form(attack_score="true"), 400, "BadInput", "no calibrated attack score"),
    ("unknown-field", _form(colour="red"), 400, "BadInput", "unknown"),
    ("multipart-without-image", {"files": H.form(None, labels='["cat"]')}, 400, "BadInput", "no image"),
    ("image-field-not-image", {"files": {"image": ("x.txt", b"plain text", "text/plain")}}, 415, "UnsupportedMediaType", "PNG/JPEG"),
]


@pytest.fixture(scope="module")
def server(miniworld_model, tmp_path_factory):
    from clipshield.handlers.torchserve.launcher import stop_server

    handle, store = H.start(miniworld_model, tmp_path_factory.mktemp("rel"), workers=1, batch_delay_ms=100)
    yield handle
    assert stop_server(store)


@pytest.fixture(scope="module")
def reference(server):
    """Each good image's answer when sent alone, and the worker pids at the start."""
    answers = []
    for png in GOOD:
        r = H.post_png(server, png)
        assert r.status_code == 200, r.text
        answers.append(r.json())
    return answers, {w["pid"] for w in H.workers(server)}


def _same_answer(got: dict, want: dict) -> bool:
    labels = [p["label"] for p in got["predictions"]] == [p["label"] for p in want["predictions"]]
    scores = all(abs(a["score"] - b["score"]) < 1e-4 for a, b in zip(got["predictions"], want["predictions"]))
    return labels and scores and got["flagged"] == want["flagged"]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_matrix(server, reference, case):
    _, kwargs, status, error_type, words = case
    answers, _ = reference

    def send(i: int):
        if i == 0:
            fresh: dict[str, Any] = {k: (dict(v) if isinstance(v, dict) else v) for k, v in kwargs.items()}
            return H.post(server, **fresh)
        return H.post_png(server, GOOD[i - 1])

    with ThreadPoolExecutor(4) as pool:
        bad, *mates = list(pool.map(send, range(4)))
    assert bad.status_code == status, bad.text
    assert bad.headers["Content-Type"].startswith("application/json")
    body = bad.json()
    assert body["code"] == status and body["type"] == error_type, body
    assert words.lower() in body["message"].lower(), body["message"]
    for r, want in zip(mates, answers):
        assert r.status_code == 200 and _same_answer(r.json(), want), r.text
    after = H.post_png(server, GOOD[0])
    assert after.status_code == 200 and _same_answer(after.json(), answers[0])


@pytest.mark.parametrize(
    "name,data",
    [
        ("1x1", H.image(size=(1, 1))),
        ("wide-but-allowed", H.image(size=(200, 8))),
        ("cmyk-jpeg", H.image("CMYK", fmt="JPEG")),
        ("grey-jpeg", H.image("L", fmt="JPEG")),
        ("16-bit-png", H.image("I;16")),
        ("rgba-png", H.image("RGBA")),
        ("palette-png", H.image("P")),
        ("1-bit-png", H.image("1")),
    ],
)
def test_unusual_but_valid_images_are_answered(server, name, data):
    r = H.post_png(server, data)
    assert r.status_code == 200, r.text
    assert len(r.json()["predictions"]) == 5


def test_missing_content_type_with_png_is_sniffed(server, reference):
    answers, _ = reference
    r = H.post(server, data=GOOD[0])
    assert r.status_code == 200 and _same_answer(r.json(), answers[0])


def test_body_over_server_limit_rejected_by_frontend(server):
    """Bodies over TorchServe's max_request_size (16 MiB) never reach Python: 413 from the frontend."""
    r = H.post(server, data=b"\x89PNG\r\n\x1a\n" + bytes(17 * 1024 * 1024), headers=RAW_PNG)
    assert r.status_code == 413
    assert H.post_png(server, GOOD[0]).status_code == 200


def test_no_token_is_refused(server):
    r = requests.post(H.url(server), data=GOOD[0], headers=RAW_PNG, timeout=H.TIMEOUT_S)
    assert r.status_code in (400, 401) and "predictions" not in r.text


def test_worker_never_restarted(server, reference):
    """Runs last in this module: the whole matrix did not crash or replace the worker."""
    _, pids = reference
    now = H.workers(server)
    assert {w["pid"] for w in now} == pids and all(w["status"] == "READY" for w in now)


def _metric_sum(server, prefix: str, contains: str = "") -> float:
    text = requests.get(server.config.metrics_address + "/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix) and contains in line)


def test_requests_were_batched(server):
    """The matrix really exercised batch mates: fewer image-encoder batches than answered requests."""
    ok = _metric_sum(server, "clipshield_requests_total{", 'outcome="ok"')
    batches = _metric_sum(server, "clipshield_encode_seconds_count")
    assert ok > 50 and 0 < batches < 0.8 * ok, (ok, batches)
