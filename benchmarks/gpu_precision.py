"""The precision phase of benchmarks/gpu_acceptance.py: fp32 vs int8 ONNX image encoder and fp32 vs fp16 on the device.

int8: the exported fp32 encoder quantised by the one quantiser of `clipshield export --precision int8`
(`clipshield.export.quantize`), both timed on ONNX Runtime's CPU provider (the lent GPU machine carries CPU
onnxruntime only) at batch 1 and 8, calls alternating, with its parity (1 - cos vs fp32). fp16: where the
device is CUDA, the PyTorch image tower in fp32 and in half precision on the device (no fp16 ONNX: without
onnxruntime-gpu there is no CUDA provider to run it, and the CPU provider has no fast fp16 path); elsewhere
it is reported as not timed, with the reason.
"""

from __future__ import annotations

import argparse
import copy
import functools
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clipshield.models.pixel_model import PixelCLIP


def _timings(calls: dict[str, Callable[[], object]], iters: int, warmup: int = 1) -> dict[str, float]:
    """Median ms per call of each callable, calls alternating."""
    times: dict[str, list[float]] = {k: [] for k in calls}
    for i in range(warmup + iters):
        for name, fn in calls.items():
            t = time.perf_counter()
            fn()
            if i >= warmup:
                times[name].append(time.perf_counter() - t)
    return {k: 1e3 * statistics.median(v) for k, v in times.items()}


def int8_rows(folder: Path, size: int, iters: int) -> dict[str, Any]:
    """Quantise `folder`'s fp32 image encoder to int8; parity and fp32 / int8 ms per batch on CPU ONNX Runtime."""
    from clipshield.export.quantize import check_precision_parity, quantize_encoder
    from clipshield.service.precision import encoder_file
    from clipshield.service.runtime import image_encoder
    from clipshield.service.settings import RuntimeConfig

    t0 = time.perf_counter()
    quantize_encoder(folder, "int8")
    quantize_s = time.perf_counter() - t0
    parity = check_precision_parity(folder, "int8", size)
    cfg = RuntimeConfig(intra_op_threads=max(1, torch.get_num_threads()))
    sessions = {p: image_encoder(folder / encoder_file(p), cfg) for p in ("fp32", "int8")}
    rows = {}
    for batch in (1, 8):
        x = np.random.default_rng(batch).random((batch, 3, size, size), dtype=np.float32)
        ms = _timings({p: functools.partial(s, x) for p, s in sessions.items()}, iters)
        rows[f"batch_{batch}"] = {"fp32_ms": ms["fp32"], "int8_ms": ms["int8"], "speedup": ms["fp32"] / ms["int8"]}
    return {
        "provider": sessions["int8"].provider,
        "parity_1_minus_cos": max(parity.batch_1, parity.batch_8),
        "parity_tolerance": parity.tolerance,
        "quantize_seconds": quantize_s,
        "int8_mb": (folder / encoder_file("int8")).stat().st_size / 2**20,
        **rows,
    }


@torch.no_grad()
def fp16_rows(model: PixelCLIP, device: str, iters: int) -> dict[str, Any]:
    """fp32 vs half-precision image tower on a CUDA device (ms per batch, 1 - cos); not timed elsewhere."""
    if not device.startswith("cuda"):
        return {
            "timed": False,
            "reason": f"fp16 needs a CUDA device (this run: {device}); ONNX Runtime's CPU provider has no fast fp16 path",
        }
    fp32 = copy.deepcopy(model).to(device).float().eval()
    half = copy.deepcopy(model).to(device).half().eval()
    rows: dict[str, Any] = {"timed": True}
    for batch in (1, 8):
        x = torch.rand(batch, 3, model.image_size, model.image_size, generator=torch.Generator().manual_seed(batch)).to(device)

        def run(m: PixelCLIP, dtype: torch.dtype, x: torch.Tensor = x) -> torch.Tensor:
            y = m(x.to(dtype))
            torch.cuda.synchronize()
            return y

        ms = _timings({"fp32": lambda: run(fp32, torch.float32), "fp16": lambda: run(half, torch.float16)}, iters)
        cos = torch.nn.functional.cosine_similarity(run(fp32, torch.float32), run(half, torch.float16).float(), dim=-1)
        rows[f"batch_{batch}"] = {
            "fp32_ms": ms["fp32"],
            "fp16_ms": ms["fp16"],
            "speedup": ms["fp32"] / ms["fp16"],
            "one_minus_cos": float(1 - cos.min()),
        }
    return rows


def precision_phase(model: PixelCLIP, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """int8 (CPU ONNX Runtime) and fp16 (CUDA, PyTorch) against fp32; needs onnx_phase's `image_encoder.onnx` in `work`."""
    from clipshield.export.onnx_export import export_image_encoder

    cpu_model = copy.deepcopy(model).cpu().float().eval()
    if not (work / "image_encoder.onnx").is_file():
        export_image_encoder(cpu_model, work / "image_encoder.onnx")
    iters = 2 if args.tiny else 10
    return {"int8": int8_rows(work, cpu_model.image_size, iters), "fp16": fp16_rows(model, args.device, iters)}


def format_precision(p: dict[str, Any]) -> list[str]:
    """Summary lines of the precision phase."""
    i8 = p["int8"]
    lines = [
        f"int8 ONNX     on {i8['provider']}: batch 1 {i8['batch_1']['fp32_ms']:.1f} -> {i8['batch_1']['int8_ms']:.1f} ms "
        f"({i8['batch_1']['speedup']:.2f}x), batch 8 {i8['batch_8']['fp32_ms']:.1f} -> {i8['batch_8']['int8_ms']:.1f} ms "
        f"({i8['batch_8']['speedup']:.2f}x); 1 - cos vs fp32 {i8['parity_1_minus_cos']:.1e} (tolerance {i8['parity_tolerance']:g})"
    ]
    f16 = p["fp16"]
    if f16["timed"]:
        lines.append(
            f"fp16 torch    batch 1 {f16['batch_1']['fp32_ms']:.2f} -> {f16['batch_1']['fp16_ms']:.2f} ms ({f16['batch_1']['speedup']:.2f}x), "
            f"batch 8 {f16['batch_8']['fp32_ms']:.2f} -> {f16['batch_8']['fp16_ms']:.2f} ms ({f16['batch_8']['speedup']:.2f}x); "
            f"1 - cos {max(f16['batch_1']['one_minus_cos'], f16['batch_8']['one_minus_cos']):.1e}"
        )
    else:
        lines.append(f"fp16          not timed: {f16['reason']}")
    return lines
