"""int8 vs fp32 ONNX image encoder, side by side in one run: throughput and p50/p95 at batch 1 and 8.

For each model (ViT-B/32 geometry with random weights, the shipped `miniworld` and `miniworld224`), exports the
fp32 image encoder (`clipshield.export.onnx_export.export_image_encoder`) and its int8 copy through the one
quantiser of `clipshield export --precision int8` (`clipshield.export.quantize.quantize_encoder`), then times
both sessions (`clipshield.service.runtime`, the serving path) on the same random pixels, alternating fp32 and
int8 calls so that machine noise falls on both alike. Prints per-call p50/p95 latency, images/s
(batch / mean call time) and the int8 / fp32 throughput ratio against the issue-26 goal of >= 2x.
Accuracy is not measured here: `clipshield export --precision int8` measures clean, transfer and BPDA
robust accuracy (docs/quantization.md).

`--end-to-end SECONDS` also serves one model's bundle exported at each precision (int8 forced as the served
encoder, nothing measured) through TorchServe and then KServe, driven as benchmarks/bench_runtimes.py drives
them (`--clients` concurrent HTTP clients, one PNG per request), and prints requests/s and p50/p95 per
runtime and precision.

`--all-ops` also times the int8 variant export does not use (every op ORT quantises, the patch-embedding Conv
included, weights per tensor), side by side, to show why export quantises MatMul/Gemm only.

Usage: python benchmarks/bench_precision.py [--models vit-b-32,miniworld,miniworld224] [--threads 1] [--iters 30] [--all-ops]
       python benchmarks/bench_precision.py --models miniworld224 --end-to-end 10 [--clients 4]
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


ALL_OPS = "int8-all-ops"  # the alternative export rejected: every op ORT quantises (Conv too), weights per tensor


def encoders(name: str, folder: Path, threads: int, all_ops: bool) -> tuple[int, dict[str, OnnxEncoder], dict[str, float]]:
    """(image size, {precision: session}, {precision: file MB}) of one model's fp32 and int8 image encoders
    (and, with `all_ops`, the all-op per-tensor int8 variant, to show why export quantises MatMul/Gemm only)."""
    from clipshield.export.onnx_export import export_image_encoder
    from clipshield.export.quantize import quantize_encoder

    model = build(name).eval().float()
    export_image_encoder(model, folder / encoder_file("fp32"))
    quantize_encoder(folder, "int8")
    files = {p: folder / encoder_file(p) for p in ("fp32", "int8")}
    if all_ops:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        files[ALL_OPS] = folder / "image_encoder.int8-all-ops.onnx"
        quantize_dynamic(str(files["fp32"]), str(files[ALL_OPS]), weight_type=QuantType.QInt8)
    cfg = RuntimeConfig(intra_op_threads=threads)
    sessions = {p: image_encoder(f, cfg) for p, f in files.items()}
    return model.image_size, sessions, {p: f.stat().st_size / 2**20 for p, f in files.items()}


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


def end_to_end(name: str, args: argparse.Namespace) -> None:
    """Requests/s and p50/p95 of each runtime serving the fp32 and the int8 bundle of `name`, one after the other."""
    from benchmarks.bench_runtimes import kserve, torchserve
    from clipshield.export import export_model
    from clipshield.export.precision_eval import PrecisionEvalConfig
    from clipshield.service.bundle import read_card
    from tests.integration.serving_helpers import image

    model, png, results = build(name), image(seed=1), {}
    for precision in ("fp32", "int8"):
        with tempfile.TemporaryDirectory(prefix="bench_precision_e2e_") as tmp:
            work = Path(tmp)
            bundle = export_model(
                model, work / "export", precision=precision, precision_eval=PrecisionEvalConfig(n=0), force_precision=True
            )
            served = read_card(bundle).precision.served  # what both servers load (`served_image_encoder`)
            if served != precision:
                raise SystemExit(f"the {precision} bundle serves the {served} image encoder")
            results[("torchserve", precision)] = torchserve(bundle, work, png, args)
            results[("kserve", precision)] = kserve(bundle, work, png, args)
    print(f"== end to end, {name}: {args.seconds:g} s per cell, {args.clients} clients, ORT threads {args.threads}, one PNG per request")
    print(f"{'runtime':<11} {'precision':>9} {'requests':>8} {'errors':>6} {'req/s':>8} {'p50 ms':>7} {'p95 ms':>7}  top-1")
    for (runtime, precision), r in results.items():
        print(
            f"{runtime:<11} {precision:>9} {r['requests']:>8} {r['errors']:>6} {r['requests_per_s']:>8.1f} "
            f"{r['p50_ms']:>7.1f} {r['p95_ms']:>7.1f}  {r['top1']}"
        )
    for runtime in ("torchserve", "kserve"):
        ratio = results[(runtime, "int8")]["requests_per_s"] / results[(runtime, "fp32")]["requests_per_s"]
        print(f"int8 / fp32 requests/s through {runtime}: {ratio:.2f}x")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated, from: %(default)s")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads (default %(default)s)")
    p.add_argument("--iters", type=int, default=30, help="timed calls per precision and batch (default %(default)s)")
    p.add_argument("--batches", default="1,8", help="batch sizes (default %(default)s)")
    p.add_argument("--all-ops", action="store_true", help=f"also time {ALL_OPS}: every op quantised (Conv too), weights per tensor")
    p.add_argument(
        "--end-to-end",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="serve each model's bundles this long per runtime and precision (0: off)",
    )
    p.add_argument("--clients", type=int, default=4, help="concurrent HTTP clients of --end-to-end (default %(default)s)")
    args = p.parse_args(argv)
    args.seconds = args.end_to_end
    if args.end_to_end > 0:
        for name in args.models.split(","):
            end_to_end(name, args)
        return 0
    torch.set_num_threads(args.threads)
    rows: list[dict] = []
    ratios: dict[tuple[str, int, str], float] = {}
    print(f"== int8 vs fp32 ONNX image encoder: ORT threads {args.threads}, {args.iters} interleaved calls per cell, random pixels")
    for name in args.models.split(","):
        with tempfile.TemporaryDirectory(prefix="bench_precision_") as tmp:
            size, sessions, sizes = encoders(name, Path(tmp), args.threads, args.all_ops)
            print(f"{name}: {size} px, encoder files " + ", ".join(f"{p} {mb:.1f} MB" for p, mb in sizes.items()))
            for batch in (int(b) for b in args.batches.split(",")):
                x = np.random.default_rng(batch).random((batch, 3, size, size), dtype=np.float32)
                times = interleaved(sessions, x, args.iters)
                cell = {prec: row(name, batch, prec, t) for prec, t in times.items()}
                rows += cell.values()
                for prec in cell:
                    if prec != "fp32":
                        ratios[(name, batch, prec)] = cell[prec]["images_per_s"] / cell["fp32"]["images_per_s"]
    print(f"{'model':<13} {'batch':>5} {'precision':>12} {'p50 ms':>8} {'p95 ms':>8} {'images/s':>9}")
    for r in rows:
        print(f"{r['model']:<13} {r['batch']:>5} {r['precision']:>12} {r['p50_ms']:>8.2f} {r['p95_ms']:>8.2f} {r['images_per_s']:>9.1f}")
    for (name, batch, prec), ratio in ratios.items():
        print(
            f"{prec} / fp32 throughput {name} batch {batch}: {ratio:.2f}x ({'meets' if ratio >= GOAL else 'misses'} the >= {GOAL:g}x goal)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
