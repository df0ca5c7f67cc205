"""Bounded HTTP fuzz run of the prediction endpoint on real TorchServe (issue 7).

N_REQUESTS seeded random requests (mutated PNG/JPEG bodies, random bytes, random or garbage
Content-Type headers, multipart forms with random field names and values, nasty label strings),
sent 8 at a time with client timeouts. Pass: no 5xx, no connection error or hang, every 4xx has a
JSON error body, the worker was never restarted, and a good request still gets its answer.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from . import serving_helpers as H

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("java") is None, reason="TorchServe needs Java 17+ on PATH; java not found"),
]
requests = pytest.importorskip("requests")
log = logging.getLogger(__name__)

N_REQUESTS = 400
SEED = 7
SEEDS = [H.image(seed=1), H.image(fmt="JPEG", seed=2), H.image("P", seed=3), H.image("RGBA", size=(40, 24), seed=4)]
CONTENT_TYPES = [
    "image/png",
    "image/jpeg",
    None,
    "application/octet-stream",
    "text/plain",
    "image/gif",
    "application/json",
    "multipart/form-data",
    "multipart/form-data; boundary=zzz",
    ";;",
    "image/png; charset=\u00ff",
    "a" * 300,
]
NASTY = ["\\ud800", "\\u0000", "\u202e", "\ufeff", "%s%n", "{}", "{0}", "' OR 1=1 --", "<script>", "\u00ff" * 50, "cat"]


def _mutate(rng: np.random.Generator, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(int(rng.integers(0, 6))):
        out[int(rng.integers(len(out)))] = int(rng.integers(256))
    kind = rng.integers(3)
    if kind == 1:
        out = out[: int(rng.integers(len(out) + 1))]
    elif kind == 2:
        pos = int(rng.integers(len(out) + 1))
        out[pos:pos] = rng.bytes(int(rng.integers(1, 64)))
    return bytes(out)


def _labels(rng: np.random.Generator) -> Any:
    kind = rng.integers(5)
    if kind == 0:
        return rng.bytes(int(rng.integers(0, 40)))
    if kind == 1:
        return json.dumps(list(rng.choice(NASTY, size=int(rng.integers(1, 4)), replace=False))).replace("\\\\", "\\")
    if kind == 2:
        return json.dumps([f"label {i}" for i in range(int(rng.integers(0, 400)))])
    if kind == 3:
        return "[" * int(rng.integers(1, 2000))  # deep nesting
    return json.dumps(["red circle", "blue square"])


def fuzz_request(rng: np.random.Generator) -> dict[str, Any]:
    """requests.post kwargs of one random request."""
    image = _mutate(rng, SEEDS[int(rng.integers(len(SEEDS)))]) if rng.random() < 0.8 else rng.bytes(int(rng.integers(0, 512)))
    if rng.random() < 0.5:
        ctype = CONTENT_TYPES[int(rng.integers(len(CONTENT_TYPES)))]
        return {"data": image, "headers": {"Content-Type": ctype} if ctype else {}}
    fields: dict[str, Any] = {}
    for name in rng.choice(["labels", "top_k", "purify", "colour", "image\u00e9"], size=int(rng.integers(0, 4)), replace=False):
        fields[str(name)] = {
            "labels": _labels(rng),
            "top_k": str(int(rng.integers(-5, 200))),
            "purify": rng.choice(["true", "no", "2"]),
        }.get(str(name), rng.bytes(8))
    files = H.form(image if rng.random() < 0.9 else None, **fields)
    return {"files": files}


@pytest.fixture(scope="module")
def server(miniworld_model, tmp_path_factory):
    from clipshield.handlers.torchserve.launcher import stop_server

    handle, store = H.start(miniworld_model, tmp_path_factory.mktemp("fuzz"), workers=1, batch_delay_ms=10)
    yield handle
    assert stop_server(store)


def test_http_fuzz_no_5xx_no_crash(server, record_property):
    rng = np.random.default_rng(SEED)
    batch = [fuzz_request(rng) for _ in range(N_REQUESTS)]
    pids = {w["pid"] for w in H.workers(server)}

    def send(kwargs: dict[str, Any]) -> tuple[int, bool]:
        r = H.post(server, timeout=20, **kwargs)
        is_json = r.headers.get("Content-Type", "").startswith("application/json")
        return r.status_code, is_json and "code" in (r.json() if r.status_code >= 400 else {"code": 0})

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(send, batch))  # a connection error or timeout raises here and fails the test
    statuses = Counter(code for code, _ in results)
    log.info("HTTP fuzz: %d requests, statuses %s", len(results), dict(statuses))
    record_property("fuzz_requests", len(results))
    record_property("fuzz_statuses", json.dumps(dict(statuses)))
    assert len(results) == N_REQUESTS
    assert not [c for c in statuses if c >= 500], statuses
    assert all(ok for code, ok in results if 400 <= code < 500), "a 4xx without a JSON error body"
    assert statuses[200] > 0 and sum(v for c, v in statuses.items() if 400 <= c < 500) > N_REQUESTS // 2
    assert {w["pid"] for w in H.workers(server)} == pids
    assert H.post_png(server, SEEDS[0]).status_code == 200


def test_empty_multipart_field_name_is_a_frontend_500_worker_unharmed(server):
    """Known TorchServe 0.12 limitation, pinned here: Netty's multipart decoder throws on a part
    with an empty name and the Java frontend answers 500 before any clipshield code runs (so this
    input is left out of the fuzz run above). The worker is untouched and keeps answering."""
    pids = {w["pid"] for w in H.workers(server)}
    r = H.post(server, files={"": (None, "x"), **H.form(SEEDS[0])})
    assert r.status_code == 500
    assert H.post_png(server, SEEDS[0]).status_code == 200
    assert {w["pid"] for w in H.workers(server)} == pids
