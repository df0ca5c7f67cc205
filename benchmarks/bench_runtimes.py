"""TorchServe vs KServe throughput on the same bundle and machine, one after the other in one run.

Exports the model once (mini world by default), serves that bundle with TorchServe (no-archive
store, one worker, server batch 8) and then with the KServe runtime (one process), and drives each
for `--seconds` with `--clients` concurrent HTTP clients sending one PNG per request (TorchServe: raw
body; KServe: v2 JSON with the image base64). Every answer must be 200 with the same top-1 label;
prints requests/s, p50/p95 latency per runtime and the KServe / TorchServe throughput ratio.

Usage: python benchmarks/bench_runtimes.py [--model miniworld] [--seconds 10] [--clients 4] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.integration.serving_helpers import free_port, image
from tests.load.oip import as_torchserve, infer_body


def drive(send: Callable[[object], tuple[int, str]], seconds: float, clients: int) -> dict:
    """`clients` threads calling `send(session)` for `seconds`; requests/s, latency percentiles, top-1 labels."""
    import requests

    latencies: list[float] = []
    labels: set[str] = set()
    errors: list[str] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def client() -> None:
        session = requests.Session()
        while time.monotonic() < stop_at:
            t = time.perf_counter()
            status, top1 = send(session)
            dt = time.perf_counter() - t
            with lock:
                (latencies.append(dt) if status == 200 else errors.append(f"HTTP {status}"))
                labels.add(top1)

    start = time.monotonic()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    elapsed = time.monotonic() - start
    q = statistics.quantiles(latencies, n=20) if len(latencies) >= 20 else [float("nan")] * 19
    return {
        "requests": len(latencies),
        "errors": len(errors),
        "requests_per_s": len(latencies) / elapsed,
        "p50_ms": 1e3 * statistics.median(latencies),
        "p95_ms": 1e3 * q[18],
        "top1": sorted(labels),
    }


def torchserve(bundle: Path, work: Path, png: bytes, args: argparse.Namespace) -> dict:
    from clipshield.handlers.torchserve.archive import BatchingConfig, build_archive
    from clipshield.handlers.torchserve.launcher import start_server, stop_server
    from clipshield.service.settings import RuntimeConfig, ServingConfig
    from tests.load.run_loadtest import loopback_serve_config

    store = work / "store"
    build_archive(
        bundle,
        store,
        archive_format="no-archive",
        serving=ServingConfig(runtime=RuntimeConfig(intra_op_threads=args.threads)),
        batching=BatchingConfig(batch_size=8, max_batch_delay_ms=5, min_workers=1, max_workers=1),
    )
    cfg = loopback_serve_config(1, 300, models="clipshield=clipshield")
    handle = start_server(store, cfg)
    try:
        url, headers = (
            cfg.inference_address + "/predictions/clipshield",
            {"Authorization": f"Bearer {handle.keys()['inference']}", "Content-Type": "image/png"},
        )

        def send(session) -> tuple[int, str]:
            r = session.post(url, data=png, headers=headers, timeout=60)
            return r.status_code, r.json()["predictions"][0]["label"] if r.status_code == 200 else ""

        return drive(send, args.seconds, args.clients)
    finally:
        stop_server(store)


def kserve(bundle: Path, work: Path, png: bytes, args: argparse.Namespace) -> dict:
    from clipshield.handlers.kserve.launcher import KServeConfig, start_kserve, stop_kserve

    handle = start_kserve(bundle, work / "kserve", KServeConfig(http_port=free_port(), ort_threads=args.threads, startup_timeout_s=300))
    try:
        url, body = handle.url + "/v2/models/clipshield/infer", json.dumps(infer_body(png)).encode()

        def send(session) -> tuple[int, str]:
            r = session.post(url, data=body, headers={"Content-Type": "application/json"}, timeout=60)
            return r.status_code, as_torchserve(r.json())["predictions"][0]["label"] if r.status_code == 200 else ""

        return drive(send, args.seconds, args.clients)
    finally:
        stop_kserve(work / "kserve")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="miniworld")
    p.add_argument("--seconds", type=float, default=10.0, help="load time per runtime (default %(default)s)")
    p.add_argument("--clients", type=int, default=4, help="concurrent HTTP clients (default %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads (default %(default)s)")
    args = p.parse_args(argv)
    from clipshield.export import export_model
    from clipshield.models.factory import load_model

    with tempfile.TemporaryDirectory(prefix="bench_runtimes_") as tmp:
        work = Path(tmp)
        bundle = export_model(load_model(args.model), work / "export")
        png = image(seed=1)
        results = {"torchserve": torchserve(bundle, work, png, args), "kserve": kserve(bundle, work, png, args)}
    print(f"== {args.model}: {args.seconds:g} s per runtime, {args.clients} clients, ORT threads {args.threads}, one PNG per request")
    print(f"{'runtime':<11} {'requests':>8} {'errors':>6} {'req/s':>8} {'p50 ms':>7} {'p95 ms':>7}  top-1")
    for name, r in results.items():
        print(
            f"{name:<11} {r['requests']:>8} {r['errors']:>6} {r['requests_per_s']:>8.1f} {r['p50_ms']:>7.1f} {r['p95_ms']:>7.1f}  {r['top1']}"
        )
    ratio = results["kserve"]["requests_per_s"] / results["torchserve"]["requests_per_s"]
    print(f"KServe / TorchServe throughput: {ratio:.2f}")
    same = results["kserve"]["top1"] == results["torchserve"]["top1"]
    return 0 if same and not any(r["errors"] for r in results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
