"""Replace the model a running KServe server answers with, while traffic flows, and lose nothing.

The server (`handlers/kserve/app.py`) loads the new bundle beside the served one when it gets SIGHUP,
then switches in one assignment (`ClipshieldKServeModel.replace`): requests in flight finish on the old
model, every later one gets the new, and the server never stops listening. The request and the answer
are small JSON files in the server's state folder (`refresh.json` in, `refreshed.json` out), so only
someone who can signal the process and write its state folder can ask; nothing is added to the network API.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

REQUEST_FILE = "refresh.json"
RESULT_FILE = "refreshed.json"


def _write_atomically(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc))
    tmp.replace(path)


def install_refresh_handler(replace: Callable[[Path], str], folder: Path) -> None:
    """On SIGHUP, call `replace(bundle)` for the bundle named in `folder/refresh.json` (in a thread: the
    server keeps answering while the new bundle loads), then write the outcome to `folder/refreshed.json`."""

    def work() -> None:
        request: dict[str, Any] = {}
        try:
            request = json.loads((folder / REQUEST_FILE).read_text())
            result = {"id": request["id"], "ok": True, "version": replace(Path(request["bundle"]))}
        except Exception as exc:  # noqa: BLE001 (any failure is reported to the caller; the old model keeps serving)
            log.error("model refresh failed, still serving the previous model: %s", exc)
            result = {"id": request.get("id"), "ok": False, "error": f"{type(exc).__name__}: {exc}"}
        _write_atomically(folder / RESULT_FILE, result)

    signal.signal(signal.SIGHUP, lambda *_: threading.Thread(target=work, name="clipshield-refresh", daemon=True).start())


def request_refresh(pid: int, folder: Path, bundle: Path, timeout_s: float) -> dict[str, Any]:
    """Ask the server process `pid` (state folder `folder`) to switch to `bundle`; its answer once the switch
    is done: {"ok": true, "version": ...} or {"ok": false, "error": ...}. TimeoutError when none comes."""
    ask = {"id": uuid.uuid4().hex, "bundle": str(Path(bundle).resolve())}
    _write_atomically(folder / REQUEST_FILE, ask)
    os.kill(pid, signal.SIGHUP)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            answer = json.loads((folder / RESULT_FILE).read_text())
        except (OSError, ValueError):
            answer = {}
        if answer.get("id") == ask["id"]:
            return answer
        time.sleep(0.1)
    raise TimeoutError(f"no answer to the refresh request within {timeout_s:.0f} s")
