"""`make soak`: minutes of moderate load on one runtime, watching the server's memory and latency.

Starts TorchServe or KServe on the mini-world bundle (free loopback ports), runs `clients` threads that
each send one PNG request, wait `think_ms`, and repeat, for `minutes`; samples the server's resident
memory (the whole process tree: TorchServe's launcher, JVM and workers) every `sample_s`. After a
`warmup_s` warm-up, the first and the last `window_s` are compared: RSS growth (mean of the samples)
and p95 drift (latency of requests sent in each window). Passes with 0 errors, growth <= 10 % and
drift <= 20 %. Usage: `python -m tests.load.soak --runtime kserve --minutes 10 [--out FILE]`.
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import Field

from clipshield.service.config import StrictModel

Sample = tuple[float, float]  # (seconds since start, value)


class SoakConfig(StrictModel):
    """Load shape, windows and pass criteria of one soak."""

    runtime: Literal["torchserve", "kserve"] = "kserve"
    minutes: float = Field(default=10.0, gt=0)
    clients: int = Field(default=2, ge=1)
    think_ms: float = Field(default=20.0, ge=0)
    warmup_s: float = Field(default=60.0, ge=0)
    window_s: float = Field(default=120.0, gt=0)
    sample_s: float = Field(default=5.0, gt=0)
    max_rss_growth: float = 0.10
    max_p95_drift: float = 0.20


@contextmanager
def served(runtime: str, work: Path) -> Iterator[tuple[Callable[[bytes], int], int]]:
    """A server on the mini-world bundle: (send one PNG -> HTTP status, server pid); stopped on exit."""
    import requests

    from clipshield.export import export_model
    from clipshield.models.factory import load_model
    from tests.integration import serving_helpers as H

    if runtime == "torchserve":
        handle, store = H.start(load_model("miniworld"), work, workers=1, batch_delay_ms=5)
        session, url, auth = requests.Session(), H.url(handle), H.auth(handle)
        try:
            yield (
                (lambda png: session.post(url, data=png, headers={**auth, "Content-Type": "image/png"}, timeout=30).status_code),
                handle.process.pid,
            )
        finally:
            from clipshield.handlers.torchserve.launcher import stop_server

            stop_server(store)
        return
    from clipshield.handlers.kserve.launcher import KServeConfig, start_kserve, stop_kserve

    bundle = export_model(load_model("miniworld"), work / "export")
    kserve = start_kserve(bundle, work / "state", KServeConfig(http_port=H.free_port(), ort_threads=1))
    session, infer = requests.Session(), f"{kserve.url}/v2/models/clipshield/infer"

    def send(png: bytes) -> int:
        body: dict[str, Any] = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(png).decode()]}]}
        return session.post(infer, json=body, timeout=30).status_code

    try:
        yield send, kserve.process.pid
    finally:
        stop_kserve(work / "state")


def tree_rss(pid: int) -> float:
    """Resident memory (bytes) of process `pid` and all its descendants."""
    import psutil  # type: ignore[import-untyped]  # no stubs installed

    root = psutil.Process(pid)
    total = 0.0
    for proc in [root, *root.children(recursive=True)]:
        try:
            total += proc.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total


def _client(send: Callable[[bytes], int], seed: int, cfg: SoakConfig, t0: float, stop: threading.Event, out: list) -> None:
    from tests.integration.serving_helpers import image

    pngs = [image(seed=seed * 100 + i) for i in range(8)]
    i = 0
    while not stop.is_set():
        sent = time.monotonic()
        try:
            status = send(pngs[i % len(pngs)])
        except Exception:  # noqa: BLE001 (a refused connection or timeout is an error of the soak, counted)
            status = 0
        out.append((sent - t0, time.monotonic() - sent, status))
        i += 1
        stop.wait(cfg.think_ms / 1000)


def _p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1] if len(values) >= 2 else float("nan")


def summarize(cfg: SoakConfig, requests_: list[tuple[float, float, int]], rss: list[Sample], duration_s: float) -> dict[str, Any]:
    """Totals, the first and last windows after warm-up, and the problems against the pass criteria."""
    first = (cfg.warmup_s, cfg.warmup_s + cfg.window_s)
    last = (duration_s - cfg.window_s, duration_s)
    latency = lambda lo, hi: [d for s, d, st in requests_ if lo <= s < hi and st == 200]  # noqa: E731
    memory = lambda lo, hi: [v for s, v in rss if lo <= s <= hi]  # noqa: E731
    p95_first, p95_last = _p95(latency(*first)), _p95(latency(*last))
    rss_first, rss_last = statistics.fmean(memory(*first)), statistics.fmean(memory(*last))
    errors = sum(1 for _, _, st in requests_ if st != 200)
    out: dict[str, Any] = {
        "runtime": cfg.runtime,
        "duration_s": round(duration_s, 1),
        "clients": cfg.clients,
        "requests": len(requests_),
        "errors": errors,
        "req_per_s": round(len(requests_) / duration_s, 1),
        "p50_ms": round(1000 * statistics.median(d for _, d, _ in requests_), 1),
        "p95_ms": round(1000 * _p95([d for _, d, _ in requests_]), 1),
        "p95_first_window_ms": round(1000 * p95_first, 1),
        "p95_last_window_ms": round(1000 * p95_last, 1),
        "p95_drift": round(p95_last / p95_first - 1, 3),
        "rss_first_window_mb": round(rss_first / 2**20, 1),
        "rss_last_window_mb": round(rss_last / 2**20, 1),
        "rss_growth": round(rss_last / rss_first - 1, 3),
    }
    out["problems"] = [
        problem
        for problem, bad in (
            (f"{errors} failed requests", errors > 0),
            (f"RSS grew {out['rss_growth']:.1%} (limit {cfg.max_rss_growth:.0%})", out["rss_growth"] > cfg.max_rss_growth),
            (f"p95 drifted {out['p95_drift']:.1%} (limit {cfg.max_p95_drift:.0%})", out["p95_drift"] > cfg.max_p95_drift),
        )
        if bad
    ]
    return out


def run_soak(cfg: SoakConfig, work: Optional[Path] = None) -> dict[str, Any]:
    """Start the server, load it for `cfg.minutes`, stop it; the summary (`problems` empty = passed)."""
    duration_s = cfg.minutes * 60
    if duration_s < cfg.warmup_s + 2 * cfg.window_s:
        raise ValueError(f"{cfg.minutes} min is shorter than the warm-up plus two windows ({cfg.warmup_s + 2 * cfg.window_s:.0f} s)")
    with tempfile.TemporaryDirectory(prefix="clipshield-soak-") as tmp, served(cfg.runtime, Path(work or tmp)) as (send, pid):
        stop, rss = threading.Event(), []
        results: list[list[tuple[float, float, int]]] = [[] for _ in range(cfg.clients)]
        t0 = time.monotonic()
        threads = [threading.Thread(target=_client, args=(send, i, cfg, t0, stop, results[i])) for i in range(cfg.clients)]
        for t in threads:
            t.start()
        while (now := time.monotonic() - t0) < duration_s:
            rss.append((now, tree_rss(pid)))
            time.sleep(min(cfg.sample_s, max(duration_s - now, 0.01)))
        rss.append((time.monotonic() - t0, tree_rss(pid)))
        stop.set()
        for t in threads:
            t.join(60)
    return summarize(cfg, [r for per in results for r in per], rss, duration_s)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.load.soak", description=__doc__)
    p.add_argument("--runtime", choices=("torchserve", "kserve"), required=True)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--clients", type=int, default=2)
    p.add_argument("--out", type=Path, default=None, help="also write the summary JSON here")
    args = p.parse_args(argv)
    summary = run_soak(SoakConfig(runtime=args.runtime, minutes=args.minutes, clients=args.clients))
    text = json.dumps(summary, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0 if not summary["problems"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
