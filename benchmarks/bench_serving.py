"""Serving benchmark: ORT vs torch eager, raw ORT session vs end-to-end TorchServe, purification cost.

Prints, in one run, for each model (`miniworld`: the shipped model; `vit-b-32`: open_clip's
ViT-B/32 architecture with random weights, since real weights cannot be downloaded here):
1. image-encoder latency, torch eager vs ONNX Runtime at batch 1 and 8, for each ORT graph
   optimisation level and with/without IO binding (same thread count), and the best speed-up;
2. raw ORT session throughput vs end-to-end TorchServe throughput (same model, batch, threads;
   one worker, `batch` concurrent clients), as a ratio;
3. request p50 through TorchServe with purification on vs off, and the overhead in percent;
4. request p50 with the attack score on vs off (issue 15: one extra encoder pass per squeezer, `n_noise`
   for tau, none for anchor, margin, pixel_median), in process (`ClipshieldService.predict`, one request at a
   time, each `--score-signals` set side by side: by default the current and the previous default set and each
   signal alone, whose p50 minus the plain p50 is that signal's cost) and through TorchServe (the default set),
   same run; and the image encoder on 3 images as one batch-3 call vs three batch-1 calls (issue 26: would
   running the squeezed copies in the original's session call pay?).
   The bench bundle carries a latency-only score calibration (unfitted parameters: the cost of the score
   does not depend on them; `clipshield export --calibrate-score N` fits real ones).

Usage: python benchmarks/bench_serving.py [--models miniworld,vit-b-32] [--threads 1] [--batch 8]
Numbers depend on the host; run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clipshield.service import bundle as B
from clipshield.service.runtime import image_encoder
from clipshield.service.settings import RuntimeConfig, ServingConfig


def build(name: str):
    from clipshield.models.factory import from_record, load_model
    from clipshield.service.config import ModelRecord, PreprocessConfig

    if name == "miniworld":
        return load_model("miniworld"), None
    if name == "vit-b-32":
        torch.manual_seed(0)
        record = ModelRecord(name="ViT-B-32-random", open_clip_name="ViT-B-32", preprocess=PreprocessConfig(image_size=224))
        labels = B.LabelSet(classnames=("cat", "dog", "car", "plane", "ship", "frog", "horse", "bird"), templates=("a photo of a {}.",))
        return from_record(record), labels
    raise SystemExit(f"unknown model {name!r}; known: miniworld, vit-b-32")


def timed(fn, iters: int, warmup: int = 2) -> float:
    """Median seconds per call."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def eager_vs_ort(model, bundle: Path, threads: int, iters: int) -> dict:
    torch.set_num_threads(threads)
    size = model.image_size
    out = {}
    for batch in (1, 8):
        x = torch.rand(batch, 3, size, size)
        with torch.inference_mode():
            eager = timed(partial(model, x), iters)
        row = {"eager_ms": 1e3 * eager}
        for level in ("disable", "basic", "all"):
            for io in (False, True):
                enc = image_encoder(bundle / B.IMAGE_ONNX, RuntimeConfig(intra_op_threads=threads, graph_optimization=level, io_binding=io))
                xn = x.numpy()
                row[f"ort_{level}{'_iobind' if io else ''}_ms"] = 1e3 * timed(partial(enc, xn), iters)
        best = min(v for k, v in row.items() if k.startswith("ort_"))
        row["best_speedup"] = row["eager_ms"] / best
        out[f"batch_{batch}"] = row
    return out


def serving(model, bundle: Path, work: Path, threads: int, batch: int, n_requests: int, iters: int) -> dict:
    import requests

    from clipshield.handlers.torchserve.archive import BatchingConfig, build_archive
    from clipshield.handlers.torchserve.launcher import start_server, stop_server
    from clipshield.service.preprocess import encode_png
    from tests.load.run_loadtest import loopback_serve_config

    size = model.image_size
    enc = image_encoder(bundle / B.IMAGE_ONNX, RuntimeConfig(intra_op_threads=threads))
    x = np.random.default_rng(0).random((batch, 3, size, size), dtype=np.float32)
    raw_tput = batch / timed(lambda: enc(x), iters)

    store = work / "store"
    build_archive(
        bundle,
        store,
        archive_format="no-archive",
        serving=ServingConfig(runtime=RuntimeConfig(intra_op_threads=threads)),
        batching=BatchingConfig(batch_size=batch, max_batch_delay_ms=5, min_workers=1, max_workers=1),
    )
    cfg = loopback_serve_config(1, 300, models="clipshield=clipshield")
    handle = start_server(store, cfg)
    try:
        url = cfg.inference_address + "/predictions/clipshield"
        auth = {"Authorization": f"Bearer {handle.keys()['inference']}"}
        png = encode_png(x[0])
        session = requests.Session()

        def post(purify: str, score: str = "false") -> float:
            t = time.perf_counter()
            r = session.post(
                url, files={"image": ("x.png", png, "image/png")}, data={"purify": purify, "attack_score": score}, headers=auth, timeout=120
            )
            r.raise_for_status()
            return time.perf_counter() - t

        for _ in range(3):
            post("false")

        def client(_i: int) -> None:
            s = requests.Session()
            for _ in range(max(1, n_requests // batch)):
                s.post(
                    url, files={"image": ("x.png", png, "image/png")}, data={"purify": "false"}, headers=auth, timeout=120
                ).raise_for_status()

        t = time.perf_counter()
        with ThreadPoolExecutor(batch) as pool:
            list(pool.map(client, range(batch)))
        served_tput = batch * max(1, n_requests // batch) / (time.perf_counter() - t)
        p50 = {}
        for mode in ("false", "true", "score"):  # interleaved rounds, so load drift hits every mode alike
            p50[mode] = []
        for _ in range(n_requests):
            for mode in p50:
                p50[mode].append(post("false", "true") if mode == "score" else post(mode))
        p50 = {mode: statistics.median(times) for mode, times in p50.items()}
    finally:
        stop_server(store)
    return {
        "raw_ort_images_per_s": raw_tput,
        "torchserve_images_per_s": served_tput,
        "ratio": served_tput / raw_tput,
        "p50_ms_purify_off": 1e3 * p50["false"],
        "p50_ms_purify_on": 1e3 * p50["true"],
        "purify_overhead_pct": 100 * (p50["true"] / p50["false"] - 1),
        "p50_ms_score_on": 1e3 * p50["score"],
        "score_overhead_pct": 100 * (p50["score"] / p50["false"] - 1),
    }


def latency_only_score(signals=None):
    """An attack-score calibration with unfitted parameters (zero weights), for timing the score only."""
    from clipshield.service.attack_score_config import AttackScoreConfig, ScoreParams

    cfg = AttackScoreConfig() if signals is None else AttackScoreConfig(signals=tuple(signals))
    n = len(cfg.signals)
    params = ScoreParams(
        signals=cfg.signals,
        mean=(0.0,) * n,
        std=(1.0,) * n,
        weights=(0.0,) * n,
        bias=0.0,
        threshold=0.0,
        target_fpr=0.05,
        dataset="benchmark: not fitted (latency only)",
        n_calibration=1,
    )
    return B.AttackScoreCalibration(config=cfg, params=params, attack="none", notes=("latency benchmark only",))


def in_process_score(bundle: Path, threads: int, n_requests: int, signal_sets: list[tuple[str, ...]]) -> dict:
    """Request p50 through `ClipshieldService.predict` (decode included, no HTTP): attack score off, and on
    with each signal set (the service's scorer swapped between requests; rounds interleaved). Wall time, and
    the process's CPU time per request (`cpu_`: the work itself, which a busy shared host does not inflate)."""
    from clipshield.service.attack_score_np import NumpyAttackScorer
    from clipshield.service.inference import ClipshieldService, RawRequest
    from clipshield.service.preprocess import encode_png

    service = ClipshieldService.from_folder(bundle, ServingConfig(runtime=RuntimeConfig(intra_op_threads=threads)))
    size = service.record.preprocess.image_size
    png = encode_png(np.random.default_rng(0).random((3, size, size), dtype=np.float32))
    scorers = {}
    for signals in signal_sets:
        cal = latency_only_score(signals)
        scorers[",".join(signals)] = NumpyAttackScorer(
            cal.config, cal.params, service.image_encoder, service.head, service.anchor, service.card.logit_scale
        )
    times: dict[str, list[float]] = {"off": [], **{name: [] for name in scorers}}
    cpu: dict[str, list[float]] = {mode: [] for mode in times}
    for _ in range(3):
        service.predict([RawRequest({"image": png, "attack_score": "true"}, None)])
    for _ in range(n_requests):  # interleaved, so load drift hits every mode alike
        for mode in times:
            service.scorer = scorers.get(mode)  # off: no detector (a free-signal one would run on every request)
            request = [RawRequest({"image": png, "attack_score": "false" if mode == "off" else "true"}, None)]
            t, c = time.perf_counter(), time.process_time()
            service.predict(request)
            times[mode].append(time.perf_counter() - t)
            cpu[mode].append(time.process_time() - c)
    out = {}
    for prefix, samples in (("", times), ("cpu_", cpu)):
        off = statistics.median(samples["off"])
        out[f"{prefix}p50_ms_score_off"] = 1e3 * off
        for name in scorers:
            on = statistics.median(samples[name])
            out[f"{prefix}p50_ms_score_on[{name}]"] = 1e3 * on
            out[f"{prefix}ratio_on_off[{name}]"] = on / off
            out[f"{prefix}extra_ms[{name}]"] = 1e3 * (on - off)
    return out | batched_vs_separate(service.image_encoder, size, max(3, n_requests // 4))


def batched_vs_separate(encode, size: int, reps: int) -> dict:
    """Median ms of the image encoder on 3 images: three batch-1 calls vs one batch-3 call (interleaved)."""
    x = np.random.default_rng(1).random((3, 3, size, size), dtype=np.float32)
    separate, batched = [], []
    for _ in range(reps):
        t = time.perf_counter()
        for i in range(3):
            encode(x[i : i + 1])
        separate.append(time.perf_counter() - t)
        t = time.perf_counter()
        encode(x)
        batched.append(time.perf_counter() - t)
    return {"encoder_3_calls_of_1_ms": 1e3 * statistics.median(separate), "encoder_1_call_of_3_ms": 1e3 * statistics.median(batched)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="miniworld,vit-b-32")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--requests", type=int, default=48)
    p.add_argument("--skip-torchserve", action="store_true")
    p.add_argument("--skip-eager", action="store_true", help="only the serving part (split runs on small hosts)")
    p.add_argument("--score-only", action="store_true", help="only the attack-score p50 in process (and through TorchServe unless skipped)")
    p.add_argument(
        "--score-signals",
        nargs="+",
        default=["anchor,margin,pixel_median", "anchor,margin,median,bits", "anchor", "margin", "pixel_median", "median", "bits", "tau"],
        help="comma-separated signal sets timed side by side in process (default: today's default, the previous one "
        "(issue 15) and each signal alone, for its cost)",
    )
    args = p.parse_args(argv)
    from clipshield.export import export_model
    from clipshield.export.exporter import ExportMeasurements

    results = {}
    for name in args.models.split(","):
        model, labels = build(name)
        with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as tmp:
            work = Path(tmp)
            score = ExportMeasurements(attack_score=latency_only_score())
            bundle = export_model(model, work / "export", labels=labels, measured=score)
            sets = [tuple(spec.split(",")) for spec in args.score_signals]
            res = {"score_in_process": in_process_score(bundle, args.threads, args.requests, sets)}
            if not (args.skip_eager or args.score_only):
                res["eager_vs_ort"] = eager_vs_ort(model, bundle, args.threads, args.iters)
            if not args.skip_torchserve:
                res["serving"] = serving(model, bundle, work, args.threads, args.batch, args.requests, args.iters)
        results[name] = res
        print(f"== {name} (threads={args.threads}, batch={args.batch})")
        for b, row in res.get("eager_vs_ort", {}).items():
            print(f"  {b}: " + ", ".join(f"{k}={v:.2f}" for k, v in row.items()))
        print("  attack score in process: " + ", ".join(f"{k}={v:.2f}" for k, v in res["score_in_process"].items()))
        if "serving" in res:
            print("  serving: " + ", ".join(f"{k}={v:.3f}" for k, v in res["serving"].items()))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
