"""A model refresh under load loses nothing (TorchServe): `clipshield serve` on a new archive while the
server runs registers the new version beside the old, makes it the default, drains and unregisters the old.

Two clients post images back to back across the switch (a bounded loop, ~3 s before and after). Every
request must be answered (0 failures), each client sees the old version and then the new, never back,
every answer finished before the switch began is the old version and every request sent after it ended
the new one. The launcher process is the same before and after (no restart).
"""

from __future__ import annotations

import shutil
import threading
import time

import pytest
import requests

from .serving_helpers import TIMEOUT_S, free_port, image
from .test_kserve_refresh import CLIENTS, PHASE_S, Answer, judge_switch
from .test_serve_reload import _serve_args

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("java") is None, reason="TorchServe needs Java 17+ on PATH; java not found"),
]


def _client(url: str, key: str, stop: threading.Event, out: list[Answer], seed: int) -> None:
    png, headers = image(seed=seed), {"Content-Type": "image/png", "Authorization": f"Bearer {key}"}
    while not stop.is_set():
        sent = time.monotonic()
        try:
            r = requests.post(url, data=png, headers=headers, timeout=TIMEOUT_S)
            status, version = r.status_code, (r.json()["model"]["version"] if r.status_code == 200 else r.text[:200])
        except requests.RequestException as exc:
            status, version = 0, str(exc)[:200]
        out.append(Answer(sent, time.monotonic(), status, version))


def _archive(bundle, store):
    """A no-archive folder (no zip step): what the server registers is a copy, so rebuilding it in place is safe."""
    from clipshield.handlers.torchserve.archive import BatchingConfig, build_archive

    batching = BatchingConfig(min_workers=1, max_workers=1, max_batch_delay_ms=5)
    return build_archive(bundle, store, archive_format="no-archive", batching=batching)


def test_refresh_under_load_loses_nothing(miniworld_model, tmp_path, capsys):
    from clipshield.cli.main import main
    from clipshield.export import export_model
    from clipshield.handlers.torchserve.launcher import STATE_DIR, read_keys, running_launcher, stop_server

    store, ports = tmp_path / "model_store", [free_port() for _ in range(5)]
    v1, v2 = (export_model(miniworld_model, tmp_path / f"export-{v}", version=v) for v in ("1.0", "2.0"))
    _archive(v1, store)
    assert main(_serve_args(store, ports)) == 0
    launcher = running_launcher(store)
    url, key = f"http://127.0.0.1:{ports[0]}/predictions/clipshield", read_keys(store / STATE_DIR)["inference"]
    stop, answers = threading.Event(), [[] for _ in range(CLIENTS)]
    threads = [threading.Thread(target=_client, args=(url, key, stop, answers[i], i)) for i in range(CLIENTS)]
    try:
        for t in threads:
            t.start()
        time.sleep(PHASE_S)
        _archive(v2, store)  # the store's archive is rebuilt while the old version serves from its own copy
        switch_start = time.monotonic()
        assert main(_serve_args(store, ports)) == 0
        switch_end = time.monotonic()
        time.sleep(PHASE_S)
    finally:
        stop.set()
        for t in threads:
            t.join(TIMEOUT_S)
        assert running_launcher(store) == launcher  # the same server process throughout
        stop_server(store)
    assert "now serves clipshield version 2.0 (was 1.0" in capsys.readouterr().out
    judge_switch("torchserve", answers, switch_start, switch_end)
