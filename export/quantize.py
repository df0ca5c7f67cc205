"""Reduced-precision copies of an exported fp32 image encoder, with ONNX Runtime's own tools, and their parity.

int8: `onnxruntime.quantization.quantize_dynamic` on the MatMul and Gemm nodes (signed 8-bit weights per output
channel; activations quantised per batch at run time, so no calibration set is needed and every input batch
gets its own range). The patch-embedding Conv stays fp32: as ConvInteger it made the miniworld224 encoder
slower than fp32 (0.74x), while MatMul-only quantisation ran it 1.4x faster and ViT-B/32 as fast as
all-op quantisation (docs/quantization.md). Static
calibration was not chosen: it fixes activation ranges from a calibration set, which an adversary can push
out of, and dynamic quantisation keeps the graph's float32 input and output, so serving is unchanged.
fp16: `onnxruntime.transformers.float16.convert_float_to_float16` with float32 input and output, only where
an execution provider with fp16 kernels (CUDA) is available: ONNX Runtime's CPU provider has no fast fp16
path and crashes building an fp16 ViT session at graph optimisation `all` (docs/quantization.md).

Parity is the largest cosine distance (1 - cos) between the reduced and the fp32 unit-norm embeddings,
at batch 1 and 8, on uniform random pixels and on `images` (real ones, when given): an absolute difference
of fp32's 1e-4 would refuse every int8 model, while the cosine bounds what zero-shot logits can move.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

import numpy as np

from clipshield.service.errors import ExportError
from clipshield.service.precision import PrecisionParity, encoder_file
from clipshield.service.runtime import ORT_PROVIDERS, image_encoder
from clipshield.service.settings import RuntimeConfig

log = logging.getLogger(__name__)

# Largest allowed 1 - cos(reduced, fp32) of unit-norm embeddings. int8: 1e-2 (cos >= 0.99; the mini models
# measure <= 3e-4); fp16: 1e-3 (10-bit mantissa).
PARITY_TOLERANCE = {"int8": 1e-2, "fp16": 1e-3}
INT8_OPS = ["MatMul", "Gemm"]
INT8_METHOD = "onnxruntime.quantization.quantize_dynamic: MatMul/Gemm, QInt8 weights per channel, activations per batch (dynamic)"
FP16_METHOD = "onnxruntime.transformers.float16.convert_float_to_float16 (keep_io_types: float32 input and output)"


def fp16_provider_available() -> bool:
    """Whether this ONNX Runtime offers the CUDA provider, the one with fp16 kernels clipshield serves on."""
    import onnxruntime as ort

    return ORT_PROVIDERS["cuda"] in ort.get_available_providers()


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        root.setLevel(level)


def quantize_encoder(folder: Path, precision: str) -> tuple[Path, str]:
    """Write `folder`'s fp32 image encoder at `precision` (int8 or fp16) beside it; (path, method).

    ExportError for fp16 without the CUDA provider, or a precision that is neither.
    """
    src, dst = folder / encoder_file("fp32"), folder / encoder_file(precision)
    if precision == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        with _quiet_root_logger():  # the quantiser logs one INFO line per tensor on the root logger
            quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, op_types_to_quantize=INT8_OPS, per_channel=True)
        return dst, INT8_METHOD
    if precision == "fp16":
        if not fp16_provider_available():
            raise ExportError(
                "--precision fp16 needs the cuda execution provider (onnxruntime-gpu and an NVIDIA GPU): ONNX Runtime's "
                "CPU provider has no fast fp16 path; use --precision int8 or fp32 on this machine"
            )
        import onnx
        from onnxruntime.transformers.float16 import convert_float_to_float16

        onnx.save(convert_float_to_float16(onnx.load(str(src)), keep_io_types=True), str(dst))
        return dst, FP16_METHOD
    raise ExportError(f"unknown reduced precision {precision!r}: choose one of ['fp16', 'int8']")


def _cosine_distance(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float((1.0 - (a * b).sum(axis=1)).max())


def check_precision_parity(
    folder: Path, precision: str, image_size: int, images: Optional[np.ndarray] = None, tolerance: Optional[float] = None
) -> PrecisionParity:
    """Largest 1 - cos of the `precision` encoder vs fp32 at batch 1 and 8 (ExportError above `tolerance`).

    Tensor contract: `images` float32 [N, 3, S, S] in [0, 1] (N >= 8), checked besides random pixels.
    """
    tol = PARITY_TOLERANCE[precision] if tolerance is None else tolerance
    providers = ("cuda",) if precision == "fp16" else ("cpu",)
    cfg = RuntimeConfig(providers=providers)
    ref, ours = image_encoder(folder / encoder_file("fp32"), RuntimeConfig()), image_encoder(folder / encoder_file(precision), cfg)
    rng = np.random.default_rng(1)
    dist = {}
    for batch in (1, 8):
        x = rng.random((batch, 3, image_size, image_size), dtype=np.float32)
        dist[batch] = _cosine_distance(ours(x), ref(x))
    if images is not None:  # real images at batch 8 too: random pixels are not the served distribution
        dist[8] = max(dist[8], _cosine_distance(ours(images[:8].astype(np.float32)), ref(images[:8].astype(np.float32))))
    report = PrecisionParity(batch_1=dist[1], batch_8=dist[8], tolerance=tol)
    if not max(dist.values()) <= tol:
        raise ExportError(f"{precision} parity failed: 1 - cos vs fp32 is {max(dist.values()):.2e}, above {tol:.0e} ({report})")
    log.info("%s parity vs fp32: 1 - cos b1 %.2e, b8 %.2e (tolerance %.0e)", precision, dist[1], dist[8], tol)
    return report
