"""Real TorchServe: labels the mini-world model cannot read get their own 400 naming the words
(issue 17 item 2), while a request with readable labels in the same moment is answered.

Skips only where Java (needed by TorchServe's frontend) is missing.
"""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor

import pytest

from . import serving_helpers as H

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("java") is None, reason="TorchServe needs Java 17+ on PATH; java not found"),
]
pytest.importorskip("requests")


@pytest.fixture(scope="module")
def server(miniworld_model, tmp_path_factory):
    from clipshield.handlers.torchserve.launcher import stop_server

    handle, store = H.start(miniworld_model, tmp_path_factory.mktemp("vocab"), workers=1, batch_delay_ms=200)
    yield handle
    assert stop_server(store)


def test_unknown_words_are_a_400_naming_them_and_batch_mates_are_served(server):
    png = H.image(seed=3)
    bad = H.form(png, labels=json.dumps(["a red circle", "a woman", "a car"]))
    good = H.form(png, labels=json.dumps(["a red circle", "a blue square"]))
    with ThreadPoolExecutor(2) as pool:  # sent together: likely one server-side batch (200 ms window)
        r_bad, r_good = pool.map(lambda files: H.post(server, files=files), [bad, good])
    assert r_bad.status_code == 400, r_bad.text
    body = r_bad.json()
    assert body["type"] == "BadInput" and body["code"] == 400
    assert "'woman', 'car'" in body["message"] and "it knows only:" in body["message"] and " circle " in body["message"]
    assert r_good.status_code == 200, r_good.text
    assert {p["label"] for p in r_good.json()["predictions"]} == {"a red circle", "a blue square"}
