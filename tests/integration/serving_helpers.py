"""Shared helpers of the TorchServe reliability tests: one server per module, crafted inputs.

Not a test module: free ports, a started server on a mini-world archive, authenticated posts,
worker pids from the management API, and image bytes in every format/mode the tests need.
"""

from __future__ import annotations

import io
import socket
import struct
import time
import zlib
from pathlib import Path
from typing import Any, Optional

import numpy as np
from PIL import Image

TIMEOUT_S = 30  # every client call has a timeout: a hang fails the test instead of stalling it


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_config(**kw: Any):
    """ServeConfig on free loopback ports for all five TorchServe listeners."""
    from clipshield.handlers.torchserve.launcher import ServeConfig

    p = [free_port() for _ in range(5)]
    return ServeConfig(
        inference_address=f"http://127.0.0.1:{p[0]}",
        management_address=f"http://127.0.0.1:{p[1]}",
        metrics_address=f"http://127.0.0.1:{p[2]}",
        grpc_inference_port=p[3],
        grpc_management_port=p[4],
        **kw,
    )


def start(model, root: Path, workers: int = 1, batch_delay_ms: int = 100, **serve_kw: Any):
    """Export the model, build a no-archive store and start TorchServe; returns (handle, store)."""
    from clipshield.export import export_model
    from clipshield.handlers.torchserve.archive import BatchingConfig, build_archive
    from clipshield.handlers.torchserve.launcher import start_server

    bundle = export_model(model, root / "export")
    store = root / "model_store"
    batching = BatchingConfig(min_workers=workers, max_workers=workers, max_batch_delay_ms=batch_delay_ms)
    build_archive(bundle, store, archive_format="no-archive", batching=batching)
    handle = start_server(store, serve_config(workers=workers, models="clipshield=clipshield", **serve_kw))
    return handle, store


def url(handle) -> str:
    return handle.config.inference_address + "/predictions/clipshield"


def auth(handle, kind: str = "inference") -> dict[str, str]:
    return {"Authorization": f"Bearer {handle.keys()[kind]}"}


def post(handle, timeout: float = TIMEOUT_S, **kw: Any):
    """POST to the prediction endpoint with the inference key (extra headers merged)."""
    import requests

    headers = {**auth(handle), **kw.pop("headers", {})}
    return requests.post(url(handle), headers=headers, timeout=timeout, **kw)


def post_png(handle, png: bytes, timeout: float = TIMEOUT_S):
    return post(handle, data=png, headers={"Content-Type": "image/png"}, timeout=timeout)


def workers(handle) -> list[dict[str, Any]]:
    """The model's workers from the management API (id, pid, status)."""
    import requests

    r = requests.get(handle.config.management_address + "/models/clipshield", headers=auth(handle, "management"), timeout=10)
    r.raise_for_status()
    return r.json()[0]["workers"]


def wait_ready_workers(handle, n: int, timeout_s: float = 60.0, exclude: frozenset[int] = frozenset()) -> set[int]:
    """Pids of READY workers once there are `n` of them (none in `exclude`); AssertionError on timeout.

    `start_server` returns when the first worker is READY; the others may still be loading.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        pids = {w["pid"] for w in workers(handle) if w["status"] == "READY"}
        if len(pids) == n and not pids & exclude:
            return pids
        if time.monotonic() > deadline:
            raise AssertionError(f"expected {n} READY workers (not {sorted(exclude)}); have {workers(handle)}")
        time.sleep(0.5)


def encode(img: Image.Image, fmt: str, **kw: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def image(mode: str = "RGB", size: tuple[int, int] = (32, 32), fmt: str = "PNG", seed: int = 0) -> bytes:
    """A random image of `mode` and `size` (width, height) encoded as `fmt`."""
    rng = np.random.default_rng(seed)
    rgb = Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype(np.uint8), "RGB")
    if mode == "I;16":
        return encode(Image.fromarray((rng.random((size[1], size[0])) * 65535).astype(np.uint16)), fmt)
    return encode(rgb if mode == "RGB" else rgb.convert(mode), fmt)


def bomb_png(width: int, height: int) -> bytes:
    """A ~70-byte PNG whose header claims width x height pixels (must be refused before decoding)."""
    data = bytearray(encode(Image.new("L", (1, 1)), "PNG"))
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF)
    return bytes(data)


def form(image_bytes: Optional[bytes], **fields: Any) -> dict[str, Any]:
    """`files=` argument of requests.post: the image part plus raw text/bytes fields."""
    files: dict[str, Any] = {name: (None, value) for name, value in fields.items()}
    if image_bytes is not None:
        files["image"] = ("x.png", image_bytes, "image/png")
    return files
