"""Replace the model a running TorchServe serves while traffic flows, through its management API.

`clipshield serve` on a model store whose server runs calls `refresh_server`: the archive now in the
store is copied beside it under a versioned name (TorchServe reads a no-archive folder in place, and the
next `clipshield archive` overwrites the store's copy), registered as a new version of the same model
with its workers started (`synchronous=true`), made the default version, so every new request goes to
it, then the old version is drained (a fixed wait for requests already routed to it) and unregistered.
The server never stops listening. The management API is on loopback with its own token; model
registration is on locally for this (`enable_model_api`), off in the cluster, where a roll-out replaces pods.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from clipshield.handlers.torchserve.launcher import STATE_DIR, ServeConfig, ServeError, read_keys, running_launcher
from clipshield.handlers.torchserve.served_archive import archive_card, check_archives

log = logging.getLogger(__name__)

DRAIN_S = 2.0  # longer than a request's queue + batch + model time at the mini models' load; see docs/deploy.md
# Settings fixed when the server started; a refresh cannot change them (the workers inherit the process's).
FIXED = ("inference_address", "management_address", "metrics_address", "token_auth", "providers", "provider_policy", "job_queue_size")


@dataclass(frozen=True)
class Refreshed:
    """What a refresh did: the version served before and now, and the copy in the store now registered."""

    old_version: str
    new_version: str
    registered: str


def _call(cfg: ServeConfig, key: Optional[str], method: str, path: str, timeout_s: float = 120.0) -> Any:
    req = urllib.request.Request(cfg.management_address.rstrip("/") + path, method=method)
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            return json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        raise ServeError(f"TorchServe management API {method} {path}: {exc.code} {exc.read()[:300].decode(errors='replace')}") from exc
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise ServeError(f"TorchServe management API {method} {path}: {exc}") from exc


def _running_config(model_store: Path) -> ServeConfig:
    raw = json.loads((model_store / STATE_DIR / "server.json").read_text())
    raw.pop("launcher_pid", None)
    return ServeConfig(**raw)


def check_refreshable(model_store: Path, cfg: ServeConfig) -> None:
    """ServeError when `cfg` asks for something only a restart can change (addresses, token, providers)."""
    running = _running_config(model_store)
    changed = [k for k in FIXED if getattr(running, k) != getattr(cfg, k)]
    if changed:
        raise ServeError(f"{', '.join(changed)} differ(s) from the running server's; a refresh keeps them: use --if-running restart")


def _copy_beside(archive: Path, model_store: Path, name: str, version: str) -> str:
    """Copy the archive into the store as `<name>-v<version>[.mar]` (TorchServe registers files at the store's top level)."""
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in version)
    target = model_store / f"{name}-v{safe}{archive.suffix}"
    if target.exists():
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    shutil.copytree(archive, target) if archive.is_dir() else shutil.copy2(archive, target)
    return target.name


def refresh_server(model_store: Path, cfg: ServeConfig, drain_s: float = DRAIN_S) -> Refreshed:
    """Serve the store's archive of `cfg.models` from the running TorchServe without a restart (module docstring)."""
    model_store = Path(model_store).resolve()
    if running_launcher(model_store) is None:
        raise ServeError(f"no TorchServe runs on {model_store}")
    name, _, file = cfg.models.partition("=")
    check_archives(model_store, cfg.models)
    archive, new_version = model_store / file, archive_card(model_store / file).version
    key = read_keys(model_store / STATE_DIR).get("management")
    running = _running_config(model_store)
    old_version = str(_call(running, key, "GET", f"/models/{name}")[0]["modelVersion"])
    if old_version == new_version:
        raise ServeError(f"{name} version {new_version} is already served; give the new archive another version (the card's)")
    registered = _copy_beside(archive, model_store, name, new_version)
    query = urllib.parse.urlencode({"url": registered, "model_name": name, "initial_workers": running.workers, "synchronous": "true"})
    _call(running, key, "POST", f"/models?{query}")
    _call(running, key, "PUT", f"/models/{name}/{urllib.parse.quote(new_version)}/set-default")
    log.info("%s: version %s is the default; draining %s for %.1f s", name, new_version, old_version, drain_s)
    time.sleep(drain_s)  # requests already routed to the old version finish on it
    _call(running, key, "DELETE", f"/models/{name}/{urllib.parse.quote(old_version)}")
    old_copy = model_store / running.models.partition("=")[2]
    if old_copy.name.startswith(f"{name}-v") and old_copy.exists():  # a copy an earlier refresh made: nothing serves it now
        shutil.rmtree(old_copy) if old_copy.is_dir() else old_copy.unlink()
    info_file = model_store / STATE_DIR / "server.json"
    info_file.write_text(json.dumps({**json.loads(info_file.read_text()), "models": f"{name}={registered}"}, indent=2))
    return Refreshed(old_version, new_version, registered)
