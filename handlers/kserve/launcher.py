"""Start and stop the KServe (Open Inference Protocol v2) server on a serving bundle.

`clipshield serve --runtime kserve`, the integration tests and the runtime benchmark use this; it is
the KServe twin of `handlers/torchserve/launcher.py`. The server is `python -m clipshield.handlers.kserve.app`
in its own session; its pid, config and log live in a state folder (default
`<model_store>/.kserve/`), so `stop_kserve(state_dir)` stops exactly the server started there.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from pydantic import Field

from clipshield.handlers.kserve.batcher import KServeBatchingConfig
from clipshield.handlers.torchserve.launcher import wait_process_gone  # one "wait until the server process has gone" for both runtimes
from clipshield.service.config import StrictModel
from clipshield.service.errors import ClipshieldError

STATE_DIR = ".kserve"


class KServeError(ClipshieldError):
    """The KServe model server could not be started, reached or stopped."""


class KServeConfig(StrictModel):
    """Where the KServe model server listens and what it calls the model."""

    host: str = "127.0.0.1"  # the interface REST and gRPC listen on; 0.0.0.0 = all interfaces (asked for explicitly)
    http_port: int = Field(default=8085, gt=0, lt=65536)
    grpc_port: int = Field(default=0, ge=0, lt=65536)  # 0: gRPC off
    model_name: str = "clipshield"
    ort_threads: Optional[int] = Field(default=None, ge=1)  # CLIPSHIELD_ORT_THREADS for the server
    providers: Optional[tuple[str, ...]] = None  # CLIPSHIELD_ORT_PROVIDERS, e.g. ("cuda", "cpu")
    provider_policy: Optional[str] = None  # CLIPSHIELD_ORT_PROVIDER_POLICY: fail | fallback
    startup_timeout_s: float = Field(default=120.0, gt=0)
    batching: KServeBatchingConfig = Field(default_factory=KServeBatchingConfig)  # cross-request batching (1 = off)


@dataclass
class KServeHandle:
    """A running KServe model server: its process, config and state folder."""

    process: subprocess.Popen
    config: KServeConfig
    state_dir: Path

    @property
    def url(self) -> str:
        return f"http://{client_host(self.config.host)}:{self.config.http_port}"


def client_host(host: str) -> str:
    """Where a local client reaches a server listening on `host` (all interfaces -> loopback)."""
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


def _command(bundle: Path, cfg: KServeConfig, state_dir: Optional[Path] = None) -> list[str]:
    state = ["--state-dir", str(state_dir)] if state_dir is not None else []
    return [*_app_command(bundle, cfg), *state]


def _app_command(bundle: Path, cfg: KServeConfig) -> list[str]:
    return [
        sys.executable,
        "-m",
        "clipshield.handlers.kserve.app",
        "--bundle",
        str(bundle),
        "--model-name",
        cfg.model_name,
        "--host-port",
        str(cfg.http_port),
        "--grpc-port",
        str(cfg.grpc_port),
        "--bind-host",
        cfg.host,
        "--max-batch-size",
        str(cfg.batching.max_batch_size),
        "--max-batch-delay-ms",
        f"{cfg.batching.max_batch_delay_ms:g}",
    ]


def _env(cfg: KServeConfig) -> dict[str, str]:
    env = dict(os.environ)
    if cfg.ort_threads is not None:
        env["CLIPSHIELD_ORT_THREADS"] = str(cfg.ort_threads)
    if cfg.providers:  # read by clipshield.service.settings.load_serving_config, as in the TorchServe image
        env["CLIPSHIELD_ORT_PROVIDERS"] = ",".join(cfg.providers)
    if cfg.provider_policy:
        env["CLIPSHIELD_ORT_PROVIDER_POLICY"] = cfg.provider_policy
    return env


def start_kserve(bundle: Path, state_dir: Path, cfg: Optional[KServeConfig] = None) -> KServeHandle:
    """Start the server in the background and wait until the model is ready; KServeError on failure."""
    cfg = cfg or KServeConfig()
    bundle, state_dir = Path(bundle).resolve(), Path(state_dir).resolve()
    if not bundle.is_dir():
        raise KServeError(f"no serving bundle at {bundle}; run `clipshield export --out {bundle}` first")
    state_dir.mkdir(parents=True, exist_ok=True)
    with (state_dir / "server.log").open("ab") as log_file:  # the child keeps its own descriptor
        proc = subprocess.Popen(
            _command(bundle, cfg, state_dir),
            cwd=state_dir,
            env=_env(cfg),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    (state_dir / "server.json").write_text(json.dumps({"pid": proc.pid, "bundle": str(bundle), **cfg.model_dump()}, indent=2))
    handle = KServeHandle(proc, cfg, state_dir)
    try:
        wait_ready(handle)
    except BaseException:  # never leave a half-started server behind
        stop_kserve(state_dir)
        raise
    return handle


def model_ready(url: str, model_name: str) -> bool:
    """True when GET /v2/models/<name>/ready answers {"ready": true} (a readiness probe)."""
    try:
        with urllib.request.urlopen(f"{url}/v2/models/{model_name}/ready", timeout=2) as resp:
            return bool(json.loads(resp.read()).get("ready"))
    except (urllib.error.URLError, OSError, ValueError):
        return False


def wait_ready(handle: KServeHandle) -> None:
    """Poll model readiness; KServeError on timeout or when the process exits."""
    deadline = time.monotonic() + handle.config.startup_timeout_s
    while time.monotonic() < deadline:
        if handle.process.poll() is not None:
            raise KServeError(f"the KServe server exited with status {handle.process.returncode}; see {handle.state_dir / 'server.log'}")
        if model_ready(handle.url, handle.config.model_name):
            return
        time.sleep(0.3)
    raise KServeError(
        f"the KServe server was not ready within {handle.config.startup_timeout_s:.0f} s; see {handle.state_dir / 'server.log'}"
    )


def stop_kserve(state_dir: Path, timeout_s: float = 20.0) -> bool:
    """Stop the server started with this state folder (SIGTERM, then SIGKILL); False when none was."""
    info_file = Path(state_dir).resolve() / "server.json"
    if not info_file.is_file():
        return False
    pid = int(json.loads(info_file.read_text())["pid"])
    for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            break
        if wait_process_gone(pid, wait_s):
            break
    info_file.unlink(missing_ok=True)
    return True


def running_pid(state_dir: Path) -> Optional[int]:
    """The pid of the server started with this state folder when it still runs, else None."""
    info_file = Path(state_dir).resolve() / "server.json"
    if not info_file.is_file():
        return None
    pid = int(json.loads(info_file.read_text())["pid"])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    return pid


def refresh_kserve(state_dir: Path, bundle: Path, timeout_s: float = 120.0) -> str:
    """Switch the running server to `bundle` without stopping it (`handlers/kserve/refresh.py`); returns the
    version it now serves. KServeError when no server runs here or the bundle does not load (the old one
    keeps serving then)."""
    from clipshield.handlers.kserve.refresh import request_refresh

    state_dir, bundle = Path(state_dir).resolve(), Path(bundle).resolve()
    pid = running_pid(state_dir)
    if pid is None:
        raise KServeError(f"no KServe server runs with state folder {state_dir}")
    if not (bundle / "clipshield_manifest.json").is_file():
        raise KServeError(f"no serving bundle at {bundle}; run `clipshield export --out {bundle}` first")
    try:
        answer = request_refresh(pid, state_dir, bundle, timeout_s)
    except TimeoutError as exc:
        raise KServeError(f"{exc}; see {state_dir / 'server.log'}") from exc
    if not answer.get("ok"):
        raise KServeError(f"the server kept its model: {answer.get('error')}")
    info_file = state_dir / "server.json"
    info_file.write_text(json.dumps({**json.loads(info_file.read_text()), "bundle": str(bundle)}, indent=2))
    return str(answer["version"])
