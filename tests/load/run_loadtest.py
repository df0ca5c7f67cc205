"""`make loadtest`: a bounded locust run against a local TorchServe serving the mini-world archive.

Steps: export + archive the model into `<results>/work/`, precompute the payloads (clean and
PGD-perturbed PNGs, label sets), start TorchServe (or KServe: `--runtime kserve`) on free 127.0.0.1 ports, run locust headless for
`--run-time` seconds, write CSV + HTML under `<results>/`, print requests/s and p50/p95/p99, stop the
server (always), and exit 1 on any failed request, any non-ok server outcome, or p95 above
`--max-p95-ms`. Usage: `python -m tests.load.run_loadtest [--run-time 30] [--users 8] ...`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import Field

from clipshield.service.config import StrictModel

from .contract import MANIFEST
from .payloads import PayloadConfig, build_payloads
from .report import LoadSummary, ReportError, format_summary, parse_outcomes, problems, read_stats

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
CSV_PREFIX = "locust"  # -> locust_stats.csv, locust_stats_history.csv, locust_failures.csv, locust_exceptions.csv


class LoadTestConfig(StrictModel):
    """One bounded load run: load shape, limits, pass criteria and where the report goes."""

    results_dir: Path = Path("results/loadtest")
    model: str = "miniworld"
    run_time_s: int = Field(default=30, ge=1, le=600)
    users: int = Field(default=8, ge=1)
    spawn_rate: float = Field(default=4.0, gt=0)
    think_ms: float = Field(default=50.0, ge=0)
    request_timeout_s: float = Field(default=10.0, gt=0)
    max_p95_ms: float = Field(default=1000.0, gt=0)
    server_workers: int = Field(default=1, ge=1)
    startup_timeout_s: float = Field(default=180.0, gt=0)
    seed: int = 0
    runtime: Literal["torchserve", "kserve"] = "torchserve"
    payloads: PayloadConfig = PayloadConfig()


class LoadTestResult(StrictModel):
    """What a run produced: its summary, the reasons it failed (empty = passed) and the report files."""

    summary: LoadSummary
    problems: tuple[str, ...]
    files: dict[str, Path]

    @property
    def passed(self) -> bool:
        return not self.problems


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def loopback_serve_config(workers: int, startup_timeout_s: float, **settings: Any):
    """A ServeConfig with all five TorchServe listeners on free 127.0.0.1 ports (never a public address);
    `settings` are further ServeConfig fields (e.g. `models` for an unpacked archive)."""
    from clipshield.handlers.torchserve.launcher import ServeConfig

    p = [_free_port() for _ in range(5)]
    return ServeConfig(
        inference_address=f"http://127.0.0.1:{p[0]}",
        management_address=f"http://127.0.0.1:{p[1]}",
        metrics_address=f"http://127.0.0.1:{p[2]}",
        grpc_inference_port=p[3],
        grpc_management_port=p[4],
        workers=workers,
        startup_timeout_s=startup_timeout_s,
        **settings,
    )


def locust_command(cfg: LoadTestConfig, host: str, payloads: Path, key_file: Optional[Path], out: Path) -> list[str]:
    """The headless locust command line (module form, so it runs with this interpreter's locust)."""
    return [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "--host",
        host,
        "--users",
        str(cfg.users),
        "--spawn-rate",
        str(cfg.spawn_rate),
        "--run-time",
        f"{cfg.run_time_s}s",
        "--stop-timeout",
        str(int(cfg.request_timeout_s) + 1),
        "--csv",
        str(out / CSV_PREFIX),
        "--html",
        str(out / "report.html"),
        "--only-summary",
        "--loglevel",
        "WARNING",
        "--logfile",
        str(out / "locust.log"),
        "--payloads",
        str(payloads),
        "--key-file",
        str(key_file) if key_file else "",
        "--request-timeout",
        str(cfg.request_timeout_s),
        "--think-ms",
        str(cfg.think_ms),
        "--seed",
        str(cfg.seed),
        "--runtime",
        cfg.runtime,
    ]


def _prepare(cfg: LoadTestConfig, work: Path) -> tuple[Path, Path]:
    """Export + archive the model and write the payloads; returns (model store, payload folder)."""
    from clipshield.export import export_model
    from clipshield.handlers.torchserve.archive import BatchingConfig, build_archive
    from clipshield.models.factory import load_model

    model = load_model(cfg.model)
    bundle = export_model(model, work / "export")
    store = work / "model_store"
    if cfg.runtime == "torchserve":  # KServe serves the bundle itself
        batching = BatchingConfig(min_workers=cfg.server_workers, max_workers=cfg.server_workers)
        build_archive(bundle, store, batching=batching)
    return store, build_payloads(model, work / "payloads", cfg.payloads).parent


def _start(cfg: LoadTestConfig, work: Path, store: Path) -> tuple[str, Optional[Path], Callable[[], list[str]], Callable[[], object]]:
    """Start the configured runtime: (host, key file or None, clipshield_ metric lines, stop)."""
    if cfg.runtime == "kserve":
        from clipshield.handlers.kserve.launcher import KServeConfig, start_kserve, stop_kserve

        handle = start_kserve(
            work / "export", work / "kserve", KServeConfig(http_port=_free_port(), startup_timeout_s=cfg.startup_timeout_s)
        )

        def kserve_metrics() -> list[str]:
            with urllib.request.urlopen(handle.url + "/metrics", timeout=10) as resp:
                return [line for line in resp.read().decode().splitlines() if line.startswith("clipshield_")]

        return handle.url, None, kserve_metrics, lambda: stop_kserve(handle.state_dir)
    from clipshield.handlers.client import ServingClient
    from clipshield.handlers.torchserve.launcher import start_server, stop_server

    ts = start_server(store, loopback_serve_config(cfg.server_workers, cfg.startup_timeout_s))
    return ts.config.inference_address, ts.state_dir / "key_file.json", ServingClient(ts, timeout_s=10).metrics, lambda: stop_server(store)


def run_loadtest(cfg: Optional[LoadTestConfig] = None) -> LoadTestResult:
    """Run the whole load test (default `LoadTestConfig()`); the server is stopped even when locust or a check fails."""
    cfg = cfg or LoadTestConfig()
    out = cfg.results_dir.resolve()
    work = out / "work"
    for stale in [*out.glob(f"{CSV_PREFIX}_*.csv"), out / "report.html", out / "summary.json"]:
        stale.unlink(missing_ok=True)  # a crashed run must not be judged by the previous run's files
    store, payloads = _prepare(cfg, work)
    host, key_file, metrics, stop = _start(cfg, work, store)
    try:
        cmd = locust_command(cfg, host, payloads, key_file, out)
        log.info("running locust for %d s: %s", cfg.run_time_s, " ".join(cmd))
        budget = cfg.run_time_s + cfg.request_timeout_s + 60  # run + draining + locust start-up/shutdown
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=budget, check=False)
        (out / "locust.out").write_text(proc.stdout + proc.stderr)
        for suffix in ("stats", "failures"):  # the final figures (see locustfile._write_final_stats)
            final = out / f"{CSV_PREFIX}_final_{suffix}.csv"
            if final.is_file():
                os.replace(final, out / f"{CSV_PREFIX}_{suffix}.csv")
        outcomes = parse_outcomes(metrics())
    finally:
        stop()
    try:
        summary = read_stats(out / CSV_PREFIX, outcomes)
    except ReportError as err:
        raise ReportError(f"{err}; locust exited {proc.returncode}: {(proc.stderr or proc.stdout)[-500:]}") from err
    found = problems(summary, cfg.max_p95_ms)
    files = {
        "stats": out / f"{CSV_PREFIX}_stats.csv",
        "history": out / f"{CSV_PREFIX}_stats_history.csv",
        "failures": out / f"{CSV_PREFIX}_failures.csv",
        "html": out / "report.html",
        "summary": out / "summary.json",
    }
    record = {
        "config": cfg.model_dump(mode="json"),
        "summary": summary.model_dump(mode="json"),
        "problems": found,
        "passed": not found,
        "attack": json.loads((payloads / MANIFEST).read_text())["attack"],
    }
    files["summary"].write_text(json.dumps(record, indent=2))
    return LoadTestResult(summary=summary, problems=tuple(found), files=files)


def write_payloads(cfg: LoadTestConfig) -> Path:
    """Only the payload folder (`<results>/work/payloads`), for running the locustfile by hand against any server."""
    from clipshield.models.factory import load_model

    return build_payloads(load_model(cfg.model), cfg.results_dir.resolve() / "work" / "payloads", cfg.payloads).parent


def parse_args(argv: Optional[list[str]] = None) -> tuple[LoadTestConfig, bool]:
    """Command line -> (LoadTestConfig with the config class's defaults, payloads-only flag)."""
    d = LoadTestConfig()
    p = argparse.ArgumentParser(prog="loadtest", description=__doc__.splitlines()[0])
    p.add_argument("--results", type=Path, default=d.results_dir, help="report folder (default %(default)s)")
    p.add_argument("--model", default=d.model, help="model to serve (default %(default)s)")
    p.add_argument("--run-time", type=int, default=d.run_time_s, help="seconds of load (default %(default)s)")
    p.add_argument("--users", type=int, default=d.users, help="concurrent locust users (default %(default)s)")
    p.add_argument("--spawn-rate", type=float, default=d.spawn_rate, help="users started per second (default %(default)s)")
    p.add_argument("--think-ms", type=float, default=d.think_ms, help="max think time per user (default %(default)s)")
    p.add_argument("--request-timeout", type=float, default=d.request_timeout_s, help="seconds per request (default %(default)s)")
    p.add_argument("--max-p95-ms", type=float, default=d.max_p95_ms, help="fail above this p95 (default %(default)s)")
    p.add_argument("--workers", type=int, default=d.server_workers, help="TorchServe workers (default %(default)s)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--runtime", choices=("torchserve", "kserve"), default=d.runtime, help="server to load (default %(default)s)")
    p.add_argument("--payloads-only", action="store_true", help="write the payloads, print a locust command, do not run")
    a = p.parse_args(argv)
    return LoadTestConfig(
        results_dir=a.results,
        model=a.model,
        run_time_s=a.run_time,
        users=a.users,
        spawn_rate=a.spawn_rate,
        think_ms=a.think_ms,
        request_timeout_s=a.request_timeout,
        max_p95_ms=a.max_p95_ms,
        server_workers=a.workers,
        seed=a.seed,
        runtime=a.runtime,
        payloads=PayloadConfig(seed=a.seed),
    ), a.payloads_only


def main(argv: Optional[list[str]] = None) -> int:
    """CLI entry: run, print the figures and the verdict; 0 = passed, 1 = failed."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg, payloads_only = parse_args(argv)
    if payloads_only:
        folder = write_payloads(cfg)
        print(
            f"payloads in {folder}; from the repo root run e.g.\n  locust -f {LOCUSTFILE.relative_to(REPO)} --headless "
            f"--host http://HOST:8080 -u {cfg.users} -r {cfg.spawn_rate:g} -t {cfg.run_time_s}s --payloads {folder} --token KEY "
            f"--csv {cfg.results_dir}/locust --html {cfg.results_dir}/report.html"
        )
        return 0
    result = run_loadtest(cfg)
    t = result.summary.total
    print(
        f"\nload test: {cfg.users} users for {cfg.run_time_s} s -> {t.rps:.1f} req/s, "
        f"p50 {t.p50_ms:.0f} ms, p95 {t.p95_ms:.0f} ms, p99 {t.p99_ms:.0f} ms, {t.failures} failed of {t.requests}"
    )
    for line in format_summary(result.summary):
        print(line)
    print("report: " + ", ".join(str(p) for p in result.files.values()))
    if result.passed:
        print(f"PASSED (p95 bound {cfg.max_p95_ms:.0f} ms)")
        return 0
    print("FAILED: " + "; ".join(result.problems))
    return 1


if __name__ == "__main__":
    sys.exit(main())
