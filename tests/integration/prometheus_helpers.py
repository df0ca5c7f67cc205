"""Prometheus and promtool for the monitoring tests: find the binaries, run a throwaway server, query it.

Not a test module. A missing binary is a test failure that says how to install it (`make tools`),
never a skip. The server runs on a free loopback port with its own config and storage in a temp dir.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import pytest
import yaml

from .serving_helpers import free_port

INSTALL_HINT = (
    "install Prometheus: `make tools` (as root: apt-get install --no-install-recommends prometheus), "
    "or put the prometheus and promtool binaries of a release on PATH"
)


def require_tool(name: str) -> str:
    """Path of `name` (promtool, prometheus); fails the test with install instructions when absent."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found on PATH: {INSTALL_HINT}", pytrace=False)
    return path


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run promtool with `args` in `cwd` (60 s limit); output in .stdout/.stderr."""
    return subprocess.run([require_tool("promtool"), *args], cwd=cwd, capture_output=True, text=True, timeout=60)


@dataclass
class Prometheus:
    """A running Prometheus: its process and base URL."""

    process: subprocess.Popen
    url: str
    log: Path

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query through the HTTP API; the result vector (or [] on an empty result)."""
        qs = urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(f"{self.url}/api/v1/query?{qs}", timeout=10) as r:
            body = json.load(r)
        assert body["status"] == "success", body
        return body["data"]["result"]

    def rules(self) -> list[dict[str, Any]]:
        """Every loaded rule with its health and (for alerts) state."""
        with urllib.request.urlopen(f"{self.url}/api/v1/rules", timeout=10) as r:
            groups = json.load(r)["data"]["groups"]
        return [rule for g in groups for rule in g["rules"]]

    def stop(self) -> None:
        """Terminate, then kill after 10 s."""
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


def start_prometheus(root: Path, target: str, rule_file: Path, job: str, interval: str = "1s") -> Prometheus:
    """Start Prometheus scraping `target` (host:port) as `job` every `interval`, evaluating `rule_file`."""
    binary = require_tool("prometheus")
    config = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval, "scrape_timeout": interval},
        "rule_files": [str(rule_file)],
        "scrape_configs": [{"job_name": job, "static_configs": [{"targets": [target]}]}],
    }
    (root / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = root / "prometheus.log"
    cmd = [
        binary,
        f"--config.file={root / 'prometheus.yml'}",
        f"--storage.tsdb.path={root / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--storage.tsdb.retention.time=1h",
    ]
    with log.open("w") as out:
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=root)
    prom = Prometheus(process, f"http://127.0.0.1:{port}", log)
    try:
        wait_for(lambda: _ready(prom), 30, "Prometheus did not become ready", prom)
    except BaseException:
        prom.stop()
        raise
    return prom


def _ready(prom: Prometheus) -> bool:
    if prom.process.poll() is not None:
        raise AssertionError(f"Prometheus exited: {prom.log.read_text()[-2000:]}")
    try:
        with urllib.request.urlopen(f"{prom.url}/-/ready", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def wait_for(check: Callable[[], Any], timeout_s: float, what: str, prom: Optional[Prometheus] = None) -> Any:
    """Poll `check` every 0.5 s until it returns something truthy; AssertionError after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.5)
    tail = prom.log.read_text()[-1500:] if prom else ""
    raise AssertionError(f"{what} within {timeout_s} s (last: {last!r}) {tail}")
