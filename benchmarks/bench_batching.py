"""Batching by measurement (issue 26, part 5): req/s and p50/p95 over server batch size x maximum delay, on
TorchServe and KServe, under locust at 1, 8 and 32 users, in one run; picks each runtime's default by one rule.

Serves the shipped `miniworld224` model (ViT-B/32 geometry: 224 px, patch 32) from one export, with one ONNX
Runtime thread: TorchServe with one worker, reconfigured between points through its management API
(unregister, then register again with `batch_size` / `max_batch_delay`; the archive's `model-config.yaml`,
which TorchServe reads before those parameters, is rewritten to the same values, and the registered values
are read back and checked); KServe restarted per configuration with `--max-batch-size` /
`--max-batch-delay-ms` (`handlers/kserve/batcher.py`; batch 1 = no cross-request batching). Locust runs in
this process (FastHttpUser, no think time: each user sends its next request when the last is answered), one
224-px PNG per request (TorchServe: raw body; KServe: v2 JSON, image base64). Each point: users spawned,
`--warmup` s, then `--seconds` s measured (every answer must be 200).

The rule (`choose`): the most req/s at the most users, among the configurations whose p95 at 1 user is at
most `--slack` times the unbatched (batch 1) p95 at 1 user; within 3 % of that best (noise), the smallest
batch, then the shortest delay.

Usage: python benchmarks/bench_batching.py [--runtimes torchserve,kserve] [--batches 1,4,8,16] [--delays 2,10,25]
           [--users 1,8,32] [--seconds 7] [--warmup 2] [--slack 1.25] [--plot docs/assets/batching-miniworld224.png]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import gevent
import locust  # noqa: F401  (before requests or torch: locust's gevent patches the standard library's sockets)
import numpy as np
from locust import FastHttpUser, constant, task
from locust.env import Environment

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.integration.serving_helpers import free_port, image
from tests.load.oip import infer_body

NOISE = 0.03  # configurations within 3 % of the best req/s count as equal


@dataclass(frozen=True)
class Point:
    runtime: str
    batch: int
    delay_ms: float
    users: int
    requests: int
    failures: int
    rps: float
    p50_ms: float
    p95_ms: float


def user_class(path: str, body: bytes, headers: dict[str, str]) -> type[FastHttpUser]:
    """A locust user posting `body` to `path` with no think time."""

    class Client(FastHttpUser):
        wait_time = constant(0)

        @task
        def predict(self) -> None:
            self.client.post(path, data=body, headers=headers)

    return Client


def measure(user: type[FastHttpUser], host: str, users: int, args: argparse.Namespace) -> tuple[int, int, float, float, float]:
    """(answers, failures, req/s, p50 ms, p95 ms) of `users` locust users over `args.seconds` after warm-up."""
    env = Environment(user_classes=[user], host=host)
    times: list[float] = []
    failures = [0]
    counting = [False]

    def on_request(response_time: float, exception: object, **_kw: object) -> None:
        if counting[0]:
            (failures.__setitem__(0, failures[0] + 1) if exception else times.append(response_time))

    env.events.request.add_listener(on_request)
    runner = env.create_local_runner()
    runner.start(users, spawn_rate=max(users, 1) * 4)
    gevent.sleep(0.25 + args.warmup)
    counting[0] = True
    start = time.perf_counter()
    gevent.sleep(args.seconds)
    counting[0] = False
    elapsed = time.perf_counter() - start
    runner.quit()
    if not times:
        return 0, failures[0], 0.0, float("nan"), float("nan")
    p50, p95 = np.percentile(times, [50, 95])
    return len(times), failures[0], len(times) / elapsed, float(p50), float(p95)


def configs(args: argparse.Namespace) -> list[tuple[int, float]]:
    """(batch, delay ms): unbatched once, then every batch > 1 with every delay."""
    return [(1, 0.0)] + [(b, d) for b in args.batches if b > 1 for d in args.delays]


def sweep_runtime(runtime: str, user: type[FastHttpUser], host: str, batch: int, delay: float, args) -> list[Point]:
    out = []
    for users in args.users:
        n, failed, rps, p50, p95 = measure(user, host, users, args)
        out.append(Point(runtime, batch, delay, users, n, failed, rps, p50, p95))
        print(
            f"  {runtime} batch {batch} delay {delay:g} ms, {users} users: {rps:.1f} req/s, p50 {p50:.1f}, p95 {p95:.1f} ms, {failed} failed",
            flush=True,
        )
    return out


def torchserve_register(handle, store: Path, batch: int, delay: float) -> None:
    """Re-register the model with `batch` / `delay` (one worker) and check what TorchServe now reports."""
    import requests

    from clipshield.handlers.torchserve.archive import BatchingConfig, model_config_yaml

    url, auth = handle.config.management_address, {"Authorization": f"Bearer {handle.keys()['management']}"}
    requests.delete(f"{url}/models/clipshield", headers=auth, timeout=120).raise_for_status()
    cfg = BatchingConfig(batch_size=batch, max_batch_delay_ms=int(delay), min_workers=1, max_workers=1)
    (store / "clipshield" / "model-config.yaml").write_text(model_config_yaml(cfg))
    query = f"url=clipshield&batch_size={batch}&max_batch_delay={int(delay)}&initial_workers=1&synchronous=true"
    requests.post(f"{url}/models?{query}", headers=auth, timeout=300).raise_for_status()
    got = requests.get(f"{url}/models/clipshield", headers=auth, timeout=30).json()[0]
    if (got["batchSize"], got["maxBatchDelay"]) != (batch, int(delay)):
        raise SystemExit(f"TorchServe registered batch {got['batchSize']} delay {got['maxBatchDelay']}, not {batch} / {int(delay)}")


def torchserve(bundle: Path, work: Path, png: bytes, args: argparse.Namespace) -> list[Point]:
    from clipshield.handlers.torchserve.archive import BatchingConfig, build_archive
    from clipshield.handlers.torchserve.launcher import start_server, stop_server
    from clipshield.service.settings import RuntimeConfig, ServingConfig
    from tests.load.run_loadtest import loopback_serve_config

    store = work / "store"
    serving = ServingConfig(runtime=RuntimeConfig(intra_op_threads=1))
    build_archive(bundle, store, archive_format="no-archive", serving=serving, batching=BatchingConfig(min_workers=1, max_workers=1))
    cfg = loopback_serve_config(1, 300, models="clipshield=clipshield")
    handle = start_server(store, cfg)
    points: list[Point] = []
    try:
        headers = {"Authorization": f"Bearer {handle.keys()['inference']}", "Content-Type": "image/png"}
        user = user_class("/predictions/clipshield", png, headers)
        for batch, delay in configs(args):
            torchserve_register(handle, store, batch, delay)
            points += sweep_runtime("torchserve", user, cfg.inference_address, batch, delay, args)
    finally:
        stop_server(store)
    return points


def kserve(bundle: Path, work: Path, png: bytes, args: argparse.Namespace) -> list[Point]:
    from clipshield.handlers.kserve.batcher import KServeBatchingConfig
    from clipshield.handlers.kserve.launcher import KServeConfig, start_kserve, stop_kserve

    user = user_class("/v2/models/clipshield/infer", json.dumps(infer_body(png)).encode(), {"Content-Type": "application/json"})
    points: list[Point] = []
    for batch, delay in configs(args):
        batching = KServeBatchingConfig(max_batch_size=batch, max_batch_delay_ms=delay)
        cfg = KServeConfig(http_port=free_port(), ort_threads=1, startup_timeout_s=300, batching=batching)
        handle = start_kserve(bundle, work / "kserve", cfg)
        try:
            points += sweep_runtime("kserve", user, handle.url, batch, delay, args)
        finally:
            stop_kserve(work / "kserve")
    return points


def choose(points: list[Point], runtime: str, slack: float) -> tuple[int, float]:
    """The rule of the module docstring: (batch, delay ms) of `runtime`'s default."""
    mine = [p for p in points if p.runtime == runtime]
    low, high = min(p.users for p in mine), max(p.users for p in mine)
    base = next(p.p95_ms for p in mine if p.batch == 1 and p.users == low)
    allowed = {(p.batch, p.delay_ms) for p in mine if p.users == low and p.p95_ms <= slack * base}
    at_high = {(p.batch, p.delay_ms): p.rps for p in mine if p.users == high and (p.batch, p.delay_ms) in allowed}
    best = max(at_high.values())
    return min(c for c, rps in at_high.items() if rps >= (1 - NOISE) * best)


def table(points: list[Point]) -> str:
    lines = [
        "| runtime | batch | max delay ms | users | requests | failed | req/s | p50 ms | p95 ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in points:
        delay = "-" if p.batch == 1 else f"{p.delay_ms:g}"
        lines.append(
            f"| {p.runtime} | {p.batch} | {delay} | {p.users} | {p.requests} | {p.failures} | {p.rps:.1f} | {p.p50_ms:.1f} | {p.p95_ms:.1f} |"
        )
    return "\n".join(lines)


def plot(points: list[Point], path: Path, args: argparse.Namespace) -> None:
    """Rows: runtimes; columns: users; req/s (solid) and p95 (dashed, right axis) over batch size, one colour per delay."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runtimes = sorted({p.runtime for p in points}, reverse=True)
    fig, axes = plt.subplots(len(runtimes), len(args.users), figsize=(4.2 * len(args.users), 3.4 * len(runtimes)), squeeze=False)
    for r, runtime in enumerate(runtimes):
        for c, users in enumerate(args.users):
            ax, ax2 = axes[r][c], axes[r][c].twinx()
            for i, delay in enumerate(args.delays):
                sel = sorted(
                    (p for p in points if p.runtime == runtime and p.users == users and (p.batch == 1 or p.delay_ms == delay)),
                    key=lambda p: p.batch,
                )
                xs = [p.batch for p in sel]
                ax.plot(xs, [p.rps for p in sel], "o-", color=f"C{i}", label=f"delay {delay:g} ms")
                ax2.plot(xs, [p.p95_ms for p in sel], "x--", color=f"C{i}", alpha=0.6)
            ax.set_ylim(bottom=0)
            ax2.set_ylim(bottom=0)
            ax.set_xscale("log", base=2)
            ax.set_xticks(args.batches, [str(b) for b in args.batches])
            ax.set_title(f"{runtime}, {users} user{'s' if users > 1 else ''}")
            ax.set_xlabel("max batch size")
            ax.set_ylabel("req/s (solid)")
            ax2.set_ylabel("p95 ms (dashed)")
            if r == 0 and c == 0:
                ax.legend(fontsize=8)
    fig.suptitle("miniworld224 (ViT-B/32 geometry), 1 ORT thread, locust, no think time")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def parse_args(argv=None) -> argparse.Namespace:
    ints = lambda s: [int(x) for x in s.split(",")]  # noqa: E731
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="miniworld224")
    p.add_argument("--runtimes", default="torchserve,kserve")
    p.add_argument("--batches", type=ints, default=[1, 4, 8, 16])
    p.add_argument("--delays", type=lambda s: [float(x) for x in s.split(",")], default=[2.0, 10.0, 25.0])
    p.add_argument("--users", type=ints, default=[1, 8, 32])
    p.add_argument("--seconds", type=float, default=7.0, help="measured seconds per point (default %(default)s)")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of load before each measurement (default %(default)s)")
    p.add_argument("--slack", type=float, default=1.25, help="allowed p95 at 1 user, times the unbatched one (default %(default)s)")
    p.add_argument("--plot", type=Path, default=None, help="write the curves here (PNG)")
    p.add_argument("--json", type=Path, default=None, help="write the points here")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from clipshield.export import export_model
    from clipshield.models.factory import load_model

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench_batching_") as tmp:
        work = Path(tmp)
        model = load_model(args.model)
        bundle = export_model(model, work / "export")
        png = image(size=(model.image_size, model.image_size), seed=1)
        points: list[Point] = []
        for runtime in args.runtimes.split(","):
            points += {"torchserve": torchserve, "kserve": kserve}[runtime](bundle, work, png, args)
    took = time.monotonic() - started
    print(
        f"== batching sweep, {args.model}: {args.seconds:g} s per point after {args.warmup:g} s warm-up, 1 ORT thread, {took:.0f} s in all"
    )
    print(table(points))
    for runtime in args.runtimes.split(","):
        batch, delay = choose(points, runtime, args.slack)
        print(f"{runtime} default by the rule (slack {args.slack:g}): batch {batch}, max delay {delay:g} ms")
    if args.plot:
        plot(points, args.plot, args)
        print(f"plot: {args.plot}")
    if args.json:
        args.json.write_text(json.dumps([asdict(p) for p in points], indent=1))
    return 1 if any(p.failures or not p.requests for p in points) else 0


if __name__ == "__main__":
    raise SystemExit(main())
