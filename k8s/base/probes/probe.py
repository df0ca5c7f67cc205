"""Kubernetes exec probe for clipshield's TorchServe container (standard library only).

`probe.py ready`: passes only when the model has at least CLIPSHIELD_PROBE_MIN_WORKERS (default 1)
workers in status READY, read from the management API (`GET /models/<name>`). TorchServe's `/ping`
says Healthy as soon as the frontend is up, before any worker has loaded the model, so it cannot
gate traffic. `probe.py live`: the inference frontend answers `/ping` at all (any 2xx).
If TorchServe's token authorisation is on, the key is read from CLIPSHIELD_KEY_FILE (key_file.json).
Exit 0 = pass, 1 = fail; one line of output, which Kubernetes shows in the pod's events.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Optional


def _key(env: Mapping[str, str], kind: str) -> Optional[str]:
    path = env.get("CLIPSHIELD_KEY_FILE", "key_file.json")
    try:
        with open(path) as f:
            return json.load(f).get(kind, {}).get("key")
    except (OSError, ValueError, AttributeError):
        return None


def _get(url: str, key: Optional[str], timeout: float) -> bytes:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return resp.read()


def ready(env: Mapping[str, str]) -> tuple[bool, str]:
    """(passed, message) for the readiness/startup check."""
    base = env.get("CLIPSHIELD_PROBE_MANAGEMENT", "http://127.0.0.1:8081")
    model = env.get("CLIPSHIELD_MODEL_NAME", "clipshield")
    need = int(env.get("CLIPSHIELD_PROBE_MIN_WORKERS", "1"))
    body = _get(f"{base}/models/{model}", _key(env, "management"), float(env.get("CLIPSHIELD_PROBE_TIMEOUT", "3")))
    described = json.loads(body)
    workers = [w for m in described for w in m.get("workers", [])]
    n_ready = sum(1 for w in workers if w.get("status") == "READY")
    return n_ready >= need, f"{model}: {n_ready}/{len(workers)} workers READY (need {need})"


def live(env: Mapping[str, str]) -> tuple[bool, str]:
    """(passed, message) for the liveness check."""
    base = env.get("CLIPSHIELD_PROBE_INFERENCE", "http://127.0.0.1:8080")
    _get(f"{base}/ping", _key(env, "inference"), float(env.get("CLIPSHIELD_PROBE_TIMEOUT", "3")))
    return True, "frontend answers /ping"


def main(argv: list[str], env: Mapping[str, str] = os.environ) -> int:
    checks = {"ready": ready, "live": live}
    if len(argv) != 1 or argv[0] not in checks:
        print(f"usage: probe.py {{{'|'.join(checks)}}}")
        return 2
    try:
        passed, message = checks[argv[0]](env)
    except (urllib.error.URLError, OSError, ValueError, TypeError, AttributeError) as err:
        passed, message = False, f"{argv[0]} check failed: {err}"
    print(message)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
