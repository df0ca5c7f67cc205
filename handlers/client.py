"""A tiny HTTP client for a running clipshield TorchServe (demo, benchmarks, smoke checks).

Standard library only: the serving extra does not pull in `requests`, and a multipart body with a
few fields is short enough to build here.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence
from typing import Any, Optional

from clipshield.handlers.torchserve.launcher import ServerHandle


def multipart(fields: dict[str, str], files: dict[str, tuple[str, bytes, str]]) -> tuple[bytes, str]:
    """(body, content type) of a multipart/form-data request."""
    boundary = uuid.uuid4().hex
    parts: list[bytes] = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, (filename, data, ctype) in files.items():
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\nContent-Type: {ctype}\r\n\r\n'
        parts.append(head.encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


class ServingClient:
    """Calls `/predictions/<model>` and reads the metrics endpoint of a `ServerHandle`."""

    def __init__(self, handle: ServerHandle, model: str = "clipshield", timeout_s: float = 60.0) -> None:
        self.handle = handle
        self.model = model
        self.timeout_s = timeout_s

    def _headers(self) -> dict[str, str]:
        key = self.handle.keys().get("inference")
        return {"Authorization": f"Bearer {key}"} if key else {}

    def predict(
        self, image: bytes, labels: Optional[Sequence[str]] = None, purify: Optional[bool] = None, top_k: Optional[int] = None
    ) -> tuple[int, dict[str, Any]]:
        """(HTTP status, JSON body). A raw PNG body when no option is set, multipart otherwise."""
        url = f"{self.handle.config.inference_address.rstrip('/')}/predictions/{self.model}"
        fields = {}
        if labels is not None:
            fields["labels"] = json.dumps(list(labels))
        if purify is not None:
            fields["purify"] = "true" if purify else "false"
        if top_k is not None:
            fields["top_k"] = str(top_k)
        if fields:
            body, ctype = multipart(fields, {"image": ("image.png", image, "image/png")})
        else:
            body, ctype = image, "image/png"
        req = urllib.request.Request(url, data=body, headers={"Content-Type": ctype, **self._headers()}, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"{}")

    def metrics(self, prefix: str = "clipshield_") -> list[str]:
        """Prometheus text lines of the metrics endpoint starting with `prefix` (samples only)."""
        url = self.handle.config.metrics_address.rstrip("/") + "/metrics"
        with urllib.request.urlopen(url, timeout=self.timeout_s) as resp:
            text = resp.read().decode()
        return [line for line in text.splitlines() if line.startswith(prefix)]

    def metrics_after(self, counter: str, at_least: float, timeout_s: float = 10.0) -> list[str]:
        """`metrics()` once the samples of `counter` add up to `at_least` (or after `timeout_s`).

        TorchServe forwards a worker's metrics to its front end asynchronously, through the
        worker's log stream, so a scrape right after the last answer can miss the last requests.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            lines = self.metrics()
            total = sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(counter + "{") or line.startswith(counter + " "))
            if total >= at_least or time.monotonic() >= deadline:
                return lines
            time.sleep(0.1)
