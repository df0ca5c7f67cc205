"""A model refresh under load loses nothing (KServe runtime): `clipshield serve` on a new bundle while a
server runs switches the model without a restart.

Two clients send requests back to back across the switch (a bounded loop, ~3 s before and after). Every
request must be answered (0 failures), each client must see the old version and then the new one, never
back, every answer finished before the switch began carries the old version and every request sent after
it ended carries the new one. A bundle that does not load leaves the old model serving.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from dataclasses import dataclass
from typing import Any

import pytest
import requests

from . import serving_helpers as H

pytestmark = pytest.mark.integration
pytest.importorskip("kserve")

MODEL = "clipshield"
CLIENTS, PHASE_S = 2, 3.0


@dataclass(frozen=True)
class Answer:
    sent: float
    done: float
    status: int
    version: str


def _infer(url: str, png: bytes) -> tuple[int, str]:
    body: dict[str, Any] = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(png).decode()]}]}
    try:
        r = requests.post(f"{url}/v2/models/{MODEL}/infer", json=body, timeout=H.TIMEOUT_S)
    except requests.RequestException:
        return 0, ""
    return r.status_code, (r.json().get("model_version", "") if r.status_code == 200 else "")


def _client(url: str, stop: threading.Event, out: list[Answer], seed: int) -> None:
    png = H.image(seed=seed)
    while not stop.is_set():
        sent = time.monotonic()
        status, version = _infer(url, png)
        out.append(Answer(sent, time.monotonic(), status, version))


def judge_switch(runtime: str, answers: list[list[Answer]], switch_start: float, switch_end: float) -> None:
    """0 failures; answers done before the switch began are 1.0, requests sent after it ended 2.0; each
    client sees 1.0 then 2.0, never back. Prints the figures (docs/serving.md quotes them)."""
    every = [a for per_client in answers for a in per_client]
    failed = [a for a in every if a.status != 200]
    before = [a for a in every if a.done < switch_start]
    after = [a for a in every if a.sent > switch_end]
    print(
        f"{runtime} refresh under load: {len(every)} requests, {len(failed)} failed, {len(before)} answered before the switch, "
        f"{len(after)} sent after it; switch took {switch_end - switch_start:.2f} s at {switch_start - min(a.sent for a in every):.2f} s"
    )
    assert not failed, failed[:5]
    assert before and all(a.version == "1.0" for a in before)
    assert after and all(a.version == "2.0" for a in after)
    for per_client in answers:
        versions = [a.version for a in per_client]
        assert versions == sorted(versions) and set(versions) == {"1.0", "2.0"}, versions


@pytest.fixture(scope="module")
def bundles(miniworld_model, tmp_path_factory):
    from clipshield.export import export_model

    root = tmp_path_factory.mktemp("refresh")
    return root, export_model(miniworld_model, root / "v1", version="1.0"), export_model(miniworld_model, root / "v2", version="2.0")


def test_refresh_under_load_loses_nothing(bundles, capsys):
    from clipshield.cli.main import main

    root, v1, v2 = bundles
    common = ["serve", "--runtime", "kserve", "--model-store", str(root / "store"), "--address", f"http://127.0.0.1:{H.free_port()}"]
    assert main([*common, "--bundle", str(v1)]) == 0
    url = common[-1]
    stop, answers = threading.Event(), [[] for _ in range(CLIENTS)]
    threads = [threading.Thread(target=_client, args=(url, stop, answers[i], i)) for i in range(CLIENTS)]
    try:
        for t in threads:
            t.start()
        time.sleep(PHASE_S)
        switch_start = time.monotonic()
        assert main([*common, "--bundle", str(v2)]) == 0  # a server runs here: refresh, not restart
        switch_end = time.monotonic()
        time.sleep(PHASE_S)
    finally:
        stop.set()
        for t in threads:
            t.join(H.TIMEOUT_S)
        assert main([*common, "--stop"]) == 0
    assert "switched without a restart" in capsys.readouterr().out
    judge_switch("kserve", answers, switch_start, switch_end)


def test_a_bundle_that_does_not_load_leaves_the_old_model_serving(bundles, tmp_path):
    import shutil

    from clipshield.handlers.kserve.launcher import KServeConfig, KServeError, refresh_kserve, start_kserve, stop_kserve

    _, v1, v2 = bundles
    broken = tmp_path / "broken"
    shutil.copytree(v2, broken)
    (broken / "text_head.npy").write_bytes(b"tampered")
    state = tmp_path / "state"
    handle = start_kserve(v1, state, KServeConfig(http_port=H.free_port()))
    try:
        with pytest.raises(KServeError, match="kept its model"):
            refresh_kserve(state, broken)
        assert _infer(handle.url, H.image(seed=3)) == (200, "1.0")
        assert json.loads((state / "server.json").read_text())["bundle"] == str(v1.resolve())
    finally:
        assert stop_kserve(state)


def test_if_running_restart_and_fail(bundles, tmp_path, capsys):
    """`--if-running restart` starts a new server process on the bundle; `--if-running fail` refuses and leaves it."""
    from clipshield.cli.main import main
    from clipshield.handlers.kserve.launcher import running_pid

    _, v1, v2 = bundles
    store, url = tmp_path / "store", f"http://127.0.0.1:{H.free_port()}"
    common = ["serve", "--runtime", "kserve", "--model-store", str(store), "--address", url]
    assert main([*common, "--bundle", str(v1)]) == 0
    try:
        first = running_pid(store / ".kserve")
        assert main([*common, "--bundle", str(v2), "--if-running", "restart"]) == 0
        assert running_pid(store / ".kserve") not in (None, first) and _infer(url, H.image(seed=4)) == (200, "2.0")
        assert main([*common, "--bundle", str(v1), "--if-running", "fail"]) == 2
        assert "already runs" in capsys.readouterr().err and _infer(url, H.image(seed=4)) == (200, "2.0")
    finally:
        assert main([*common, "--stop"]) == 0
