"""Start and stop TorchServe on a model store (`clipshield serve`, the demo and the integration test).

The model store's `config.properties` is the base (else the packaged copy beside this module, the same
generated text as the checked-in `model_store/config.properties`); each start writes a per-run copy into
`<model_store>/.server/` with the given addresses and absolute paths (metrics config, model store).
TorchServe's launcher keeps its pid file in the temp dir and `key_file.json` in its working
directory, so each server runs with TMPDIR and cwd inside its own state folder: several servers
(tests, agents) can run side by side and `stop_server(model_store)` stops exactly this one.

Starting on a model store whose server is still running restarts it (`if_running="restart"`, the
default: the new archive is what answers) or refuses (`"fail"`); TorchServe's model registration
API stays off. A listener port taken by another process is refused before launching, so a
readiness check can never be answered by someone else's server, and once ready the served model's
describe answer must name the archive's model and version.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import Field

from clipshield.handlers.torchserve.served_archive import archive_card, check_archives
from clipshield.service.config import StrictModel
from clipshield.service.errors import ClipshieldError
from clipshield.service.settings import POLICY_ENV, PROVIDERS_ENV, Provider, ProviderPolicy

log = logging.getLogger(__name__)

# The base config.properties (and the metrics.yaml it names) for a model store without its own: package data,
# generated with the checked-in model_store/ copies by monitoring/generate.py (an installed wheel has no checkout).
PACKAGED_CONFIG = Path(__file__).with_name("config.properties")
STATE_DIR = ".server"


class ServeError(ClipshieldError):
    """TorchServe could not be started, reached or stopped."""


class ServeConfig(StrictModel):
    """Where TorchServe listens and what it loads. Management and metrics stay on loopback by default."""

    inference_address: str = "http://127.0.0.1:8080"
    management_address: str = "http://127.0.0.1:8081"
    metrics_address: str = "http://127.0.0.1:8082"
    grpc_inference_port: int = Field(default=7070, gt=0, lt=65536)
    grpc_management_port: int = Field(default=7071, gt=0, lt=65536)
    models: str = "clipshield=clipshield.mar"
    token_auth: bool = True
    workers: int = Field(default=2, ge=1)
    # Requests waiting beyond this many get an immediate 503 instead of unbounded latency (issue 7).
    job_queue_size: int = Field(default=100, ge=1)
    startup_timeout_s: float = Field(default=120.0, gt=0)
    # Execution providers for the workers (CLIPSHIELD_ORT_PROVIDERS / _POLICY); None keeps serving.json's.
    providers: Optional[tuple[Provider, ...]] = None
    provider_policy: Optional[ProviderPolicy] = None
    # A server already running on this model store: restart it on the new archive, or refuse.
    if_running: Literal["restart", "fail"] = "restart"


@dataclass
class ServerHandle:
    """A running TorchServe: its launcher process, addresses and state folder."""

    process: subprocess.Popen
    config: ServeConfig
    state_dir: Path
    replaced_pid: Optional[int] = None  # launcher pid of the server this start stopped, if any

    def keys(self) -> dict[str, str]:
        """Inference/management keys from key_file.json ({} when token auth is off)."""
        return read_keys(self.state_dir)


def read_keys(state_dir: Path) -> dict[str, str]:
    """Keys from TorchServe's key_file.json; {} while it is absent or still being written."""
    path = state_dir / "key_file.json"
    try:
        data = json.loads(path.read_text())
        return {kind: data[kind]["key"] for kind in ("inference", "management") if kind in data}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def render_properties(base: Path, model_store: Path, cfg: ServeConfig) -> str:
    """The base config.properties with this run's addresses, paths and workers substituted."""
    overrides = {
        "inference_address": cfg.inference_address,
        "management_address": cfg.management_address,
        "metrics_address": cfg.metrics_address,
        "grpc_inference_port": str(cfg.grpc_inference_port),
        "grpc_management_port": str(cfg.grpc_management_port),
        "model_store": str(model_store),
        "load_models": cfg.models,
        "metrics_config": str((base.parent / "metrics.yaml").resolve()),
        "disable_token_authorization": "false" if cfg.token_auth else "true",
        "default_workers_per_model": str(cfg.workers),
        "job_queue_size": str(cfg.job_queue_size),
    }
    lines, seen = [], set()
    for line in base.read_text().splitlines():
        key = line.split("=", 1)[0].strip()
        if not line.lstrip().startswith("#") and "=" in line and key in overrides:
            lines.append(f"{key}={overrides[key]}")
            seen.add(key)
        else:
            lines.append(line)
    lines += [f"{k}={v}" for k, v in overrides.items() if k not in seen]
    return "\n".join(lines) + "\n"


def _launcher() -> str:
    exe = Path(sys.executable).parent / "torchserve"
    found = str(exe) if exe.is_file() else shutil.which("torchserve")
    if found is None:
        raise ServeError("torchserve not found; install the 'serve' extra (pip install -e '.[serve]')")
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        raise ServeError("TorchServe needs Java 17+ on PATH (or JAVA_HOME)")
    return found


def _env(state_dir: Path, cfg: Optional[ServeConfig] = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(TMPDIR=str(state_dir / "tmp"), LOG_LOCATION=str(state_dir / "logs"), METRICS_LOCATION=str(state_dir / "logs"))
    env.pop("TS_CONFIG_FILE", None)
    if cfg is not None and cfg.providers:
        env[PROVIDERS_ENV] = ",".join(cfg.providers)
    if cfg is not None and cfg.provider_policy:
        env[POLICY_ENV] = cfg.provider_policy
    return env


def running_launcher(model_store: Path) -> Optional[int]:
    """Launcher pid of the TorchServe started on `model_store` while it is alive; None otherwise."""
    info_file = Path(model_store).resolve() / STATE_DIR / "server.json"
    try:
        pid = int(json.loads(info_file.read_text())["launcher_pid"])
        os.kill(pid, 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return pid


def _accepts(host: Optional[str], port: int) -> bool:
    """True when something accepts TCP connections on host:port (a wildcard bind is probed on loopback)."""
    host = "127.0.0.1" if host in (None, "", "0.0.0.0", "::") else host
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def _ports_in_use(cfg: ServeConfig) -> list[str]:
    """Listener addresses of `cfg` that something already accepts connections on."""
    busy = []
    for name, addr in (("inference", cfg.inference_address), ("management", cfg.management_address), ("metrics", cfg.metrics_address)):
        u = urllib.parse.urlsplit(addr)
        if _accepts(u.hostname, u.port or (443 if u.scheme == "https" else 80)):
            busy.append(f"{name} {addr}")
    for port in (cfg.grpc_inference_port, cfg.grpc_management_port):
        if _accepts("127.0.0.1", port):
            busy.append(f"gRPC port {port}")
    return busy


def _prepare_start(model_store: Path, cfg: ServeConfig) -> Optional[int]:
    """Refuse or stop a server already on this store, then refuse ports taken by anyone else; the stopped pid."""
    pid = running_launcher(model_store)
    if pid is not None and cfg.if_running == "fail":
        raise ServeError(
            f"TorchServe is already running on {model_store} (launcher pid {pid}) and would keep serving its "
            f"old archive; stop it first (clipshield serve --stop --model-store {model_store}) or restart it"
        )
    if pid is not None:
        log.warning("TorchServe already running on %s (launcher pid %d): stopping it to serve the new archive", model_store, pid)
        stop_server(model_store)
    busy = _ports_in_use(cfg)
    if busy:
        raise ServeError(
            f"already in use by another process: {', '.join(busy)}; another TorchServe (other model store?) "
            "would answer instead of this one: stop it or choose other addresses/ports"
        )
    return pid


def start_server(model_store: Path, cfg: Optional[ServeConfig] = None, base_config: Optional[Path] = None) -> ServerHandle:
    """Start TorchServe in the background and wait until the model answers /ping; ServeError on failure."""
    cfg = cfg or ServeConfig()
    model_store = Path(model_store).resolve()
    base = Path(base_config) if base_config else (model_store / "config.properties")
    if not base.is_file():
        base = PACKAGED_CONFIG
    state_dir = model_store / STATE_DIR
    check_archives(model_store, cfg.models)  # an unreadable bundle is refused here, before anything starts
    replaced = _prepare_start(model_store, cfg)
    (state_dir / "tmp").mkdir(parents=True, exist_ok=True)
    (state_dir / "logs").mkdir(parents=True, exist_ok=True)
    props = state_dir / "config.properties"
    props.write_text(render_properties(base, model_store, cfg))
    cmd = [_launcher(), "--start", "--foreground", "--ncs", "--ts-config", str(props), "--model-store", str(model_store)]
    out = (state_dir / "logs" / "launcher.log").open("ab")
    proc = subprocess.Popen(cmd, cwd=state_dir, env=_env(state_dir, cfg), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    (state_dir / "server.json").write_text(json.dumps({"launcher_pid": proc.pid, **cfg.model_dump()}, indent=2))
    handle = ServerHandle(proc, cfg, state_dir, replaced)
    try:
        wait_ready(handle)
        _check_served(handle, model_store)
    except BaseException:  # never leave a half-started server behind (timeouts, Ctrl-C, anything)
        stop_server(model_store)
        raise
    return handle


def _management_get(handle: ServerHandle, path: str, timeout_s: float = 30.0) -> Any:
    req = urllib.request.Request(handle.config.management_address.rstrip("/") + path)
    key = handle.keys().get("management")
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    with urllib.request.urlopen(req, timeout=timeout_s) as resp:
        return json.loads(resp.read())


def describe_model(handle: ServerHandle, name: str) -> dict[str, Any]:
    """The handler's describe answer (model card, bundle versions, execution providers) of a served model."""
    try:
        meta = _management_get(handle, f"/models/{name}?customized=true")[0]["customizedMetadata"]
        return json.loads(meta) if isinstance(meta, str) else dict(meta)  # TorchServe parses a JSON answer itself
    except (urllib.error.URLError, OSError, ValueError, KeyError, IndexError, TypeError) as exc:
        raise ServeError(f"could not describe model {name} on {handle.config.management_address}: {exc}") from exc


def _check_served(handle: ServerHandle, model_store: Path) -> None:
    """ServeError unless each served model's describe answer names its archive's model name and version."""
    for entry in handle.config.models.split(","):
        name, _, file = entry.partition("=")
        served = describe_model(handle, name.strip())["model"]
        card = archive_card(model_store / file.strip())
        if (served["name"], served["version"]) != (card.name, card.version):
            raise ServeError(f"{name} answers as {served['name']} {served['version']}, but its archive holds {card.name} {card.version}")


def wait_ready(handle: ServerHandle) -> None:
    """Poll /ping until it reports Healthy and the model has a worker; ServeError on timeout or exit."""
    deadline = time.monotonic() + handle.config.startup_timeout_s
    while time.monotonic() < deadline:
        if handle.process.poll() is not None:
            raise ServeError(f"TorchServe exited with status {handle.process.returncode}; see {handle.state_dir / 'logs'}")
        if ping(handle.config.inference_address, handle.state_dir) and _model_ready(handle):
            return
        time.sleep(0.5)
    raise ServeError(f"TorchServe did not become healthy within {handle.config.startup_timeout_s:.0f} s; see {handle.state_dir / 'logs'}")


def ping(inference_address: str, state_dir: Path) -> bool:
    """True when GET /ping reports Healthy. With token auth on, TorchServe wants the inference key
    even for /ping, so the probe reads it from the server's key_file.json (an exec health probe
    inside the container can do the same: `clipshield serve --ping`)."""
    req = urllib.request.Request(inference_address.rstrip("/") + "/ping")
    key = read_keys(state_dir).get("inference")
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=2) as resp:
            return json.loads(resp.read()).get("status") == "Healthy"
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _model_ready(handle: ServerHandle) -> bool:
    name = handle.config.models.split("=", 1)[0]
    try:
        info = _management_get(handle, f"/models/{name}", timeout_s=2.0)
    except (urllib.error.URLError, OSError, ValueError):
        return False
    workers = info[0].get("workers", []) if info else []
    return any(w.get("status") == "READY" for w in workers)


def stop_server(model_store: Path, timeout_s: float = 30.0) -> bool:
    """Stop the TorchServe started on `model_store`; False when none was running."""
    state_dir = Path(model_store).resolve() / STATE_DIR
    info_file = state_dir / "server.json"
    if not info_file.is_file():
        return False
    pid = int(json.loads(info_file.read_text())["launcher_pid"])
    subprocess.run(
        [_launcher(), "--stop", "--foreground"],
        cwd=state_dir,
        env=_env(state_dir),
        capture_output=True,
        check=False,
        timeout=timeout_s + 10,
    )
    stopped = wait_process_gone(pid, timeout_s)
    if not stopped:
        log.warning("TorchServe launcher %d still running; sending SIGTERM to its process group", pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        stopped = wait_process_gone(pid, 5.0)
    info_file.unlink(missing_ok=True)
    (state_dir / "key_file.json").unlink(missing_ok=True)
    return True


def wait_process_gone(pid: int, timeout_s: float) -> bool:
    """True once process `pid` has exited (reaped when it is our child), False after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done == pid:
                return True
        except ChildProcessError:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
        time.sleep(0.2)
    return False
