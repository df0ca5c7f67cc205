"""int8 vs fp32 ONNX image encoder, side by side in one run: throughput and p50/p95 at batch 1 and 8.

For each model (ViT-B/32 geometry with random weights, the shipped `miniworld` and `miniworld224`), exports the
fp32 image encoder (`clipshield.export.onnx_export.export_image_encoder`) and its int8 copy through the one
quantiser of `clipshield export --precision int8` (`clipshield.export.quantize.quantize_encoder`), then times
both sessions (`clipshield.service.runtime`, the serving path) on the same random pixels, alternating fp32 and
int8 calls so that machine noise falls on both alike. Prints per-call p50/p95 latency, images/s
(batch / mean call time) and the int8 / fp32 throughput ratio against the issue-26 goal of >= 2x.
Accuracy is not measured here: `clipshield export --precision int8` measures clean, transfer and BPDA
robust accuracy (docs/quantization.md).

Usage: python benchmarks/bench_precision.py [--models vit-b-32,miniworld,miniworld224] [--threads 1] [--iters 30]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clipshield.service.precision import encoder_file
from clipshield.service.runtime import OnnxEncoder, image_encoder
from clipshield.service.settings import RuntimeConfig

GOAL = 2.0
MODELS = ("vit-b-32", "miniworld", "miniworld224")


def build(name: str):
    """The PixelCLIP to export: ViT-B/32 geometry with seeded random weights, or a shipped mini model."""
    from clipshield.models.factory import from_record, load_model
    from clipshield.service.config import ModelRecord, PreprocessConfig

    if name == "vit-b-32":
        torch.manual_seed(0)
        return from_record(ModelRecord(name="ViT-B-32-random", open_clip_name="ViT-B-32", preprocess=PreprocessConfig(image_size=224)))
    if name in ("miniworld", "miniworld224"):
        return load_model(name)
    raise SystemExit(f"unknown model {name!r}; known: {', '.join(MODELS)}")


def encoders(name: str, folder: Path, threads: int) -> tuple[int, dict[str, OnnxEncoder], dict[str, float]]:
    """(image size, {precision: session}, {precision: file MB}) of one model's fp32 and int8 image encoders."""
    from clipshield.export.onnx_export import export_image_encoder
    from clipshield.export.quantize import quantize_encoder

    model = build(name).eval().float()
    export_image_encoder(model, folder / encoder_file("fp32"))
    quantize_encoder(folder, "int8")
    cfg = RuntimeConfig(intra_op_threads=threads)
    sessions = {p: image_encoder(folder / encoder_file(p), cfg) for p in ("fp32", "int8")}
    sizes = {p: (folder / encoder_file(p)).stat().st_size / 2**20 for p in ("fp32", "int8")}
    return model.image_size, sessions, sizes


def interleaved(sessions: dict[str, OnnxEncoder], x: np.ndarray, iters: int, warmup: int = 3) -> dict[str, list[float]]:
    """Seconds per call of each session on `x`, calls alternating between the sessions."""
    times: dict[str, list[float]] = {p: [] for p in sessions}
    for i in range(warmup + iters):
        for p, enc in sessions.items():
            t = time.perf_counter()
            enc(x)
            if i >= warmup:
                times[p].append(time.perf_counter() - t)
    return times


def row(model: str, batch: int, precision: str, times: list[float]) -> dict:
    q = statistics.quantiles(times, n=20)
    return {
        "model": model,
        "batch": batch,
        "precision": precision,
        "p50_ms": 1e3 * statistics.median(times),
        "p95_ms": 1e3 * q[18],
        "images_per_s": batch / statistics.mean(times),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated, from: %(default)s")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads (default %(default)s)")
    p.add_argument("--iters", type=int, default=30, help="timed calls per precision and batch (default %(default)s)")
    p.add_argument("--batches", default="1,8", help="batch sizes (default %(default)s)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows, ratios = [], {}
    print(f"== int8 vs fp32 ONNX image encoder: ORT threads {args.threads}, {args.iters} interleaved calls per cell, random pixels")
    for name in args.models.split(","):
        with tempfile.TemporaryDirectory(prefix="bench_precision_") as tmp:
            size, sessions, sizes = encoders(name, Path(tmp), args.threads)
            print(f"{name}: {size} px, encoder file fp32 {sizes['fp32']:.1f} MB, int8 {sizes['int8']:.1f} MB")
            for batch in (int(b) for b in args.batches.split(",")):
                x = np.random.default_rng(batch).random((batch, 3, size, size), dtype=np.float32)
                times = interleaved(sessions, x, args.iters)
                cell = [row(name, batch, prec, t) for prec, t in times.items()]
                rows += cell
                ratios[(name, batch)] = cell[1]["images_per_s"] / cell[0]["images_per_s"]
    print(f"{'model':<13} {'batch':>5} {'precision':>9} {'p50 ms':>8} {'p95 ms':>8} {'images/s':>9}")
    for r in rows:
        print(f"{r['model']:<13} {r['batch']:>5} {r['precision']:>9} {r['p50_ms']:>8.2f} {r['p95_ms']:>8.2f} {r['images_per_s']:>9.1f}")
    for (name, batch), ratio in ratios.items():
        print(f"int8 / fp32 throughput {name} batch {batch}: {ratio:.2f}x ({'meets' if ratio >= GOAL else 'misses'} the >= {GOAL:g}x goal)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
