"""Number format of the served image encoder: the card's `precision` section and the one rule judging it.

A bundle always holds the fp32 image encoder (`image_encoder.onnx`); `clipshield export --precision int8`
adds a quantised copy (`image_encoder.int8.onnx`, `clipshield.export.quantize`) and measures it against fp32
on the model's world: clean accuracy, and robust accuracy as the worse of PGD transferred from the fp32 model
and a straight-through (BPDA) PGD through the quantised forward (`clipshield.export.precision_eval`).
`precision_problems` is the one rule, applied by export (which precision serves by default) and by the
release gate: a reduced precision serves only when it loses at most `MAX_DROP_POINTS` of clean and of
robust accuracy. Torch-free: serving reads `served_file`, the release gate reads `precision_problems`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from pydantic import Field

from clipshield.service.config import StrictModel
from clipshield.service.errors import ModelLoadError
from clipshield.service.runtime import ORT_PROVIDERS, OnnxEncoder, image_encoder
from clipshield.service.settings import RuntimeConfig

Precision = Literal["fp32", "fp16", "int8"]
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8")
MAX_DROP_POINTS = 1.0  # accuracy points (percent) a reduced precision may lose, clean and robust (issue 26)
FP32_FILE = "image_encoder.onnx"


def encoder_file(precision: str) -> str:
    """Bundle file name of the image encoder at `precision` (fp32: the exported `image_encoder.onnx`)."""
    return FP32_FILE if precision == "fp32" else f"image_encoder.{precision}.onnx"


class PrecisionParity(StrictModel):
    """Largest cosine distance (1 - cos) between the reduced-precision and the fp32 ONNX image embeddings."""

    batch_1: float
    batch_8: float
    tolerance: float


class PrecisionAccuracy(StrictModel):
    """One world's measurement of a reduced precision against fp32 (fractions in [0, 1]).

    `fp32_robust` is PGD on the fp32 model; `transfer_robust` the same adversarial images on the reduced
    model; `bpda_robust` PGD whose forward is the reduced model and whose gradient is fp32's (straight-through).
    """

    dataset: str
    n: int = Field(ge=1)
    attack: str
    fp32_clean: float = Field(ge=0.0, le=1.0)
    fp32_robust: float = Field(ge=0.0, le=1.0)
    clean: float = Field(ge=0.0, le=1.0)
    transfer_robust: float = Field(ge=0.0, le=1.0)
    bpda_robust: float = Field(ge=0.0, le=1.0)

    @property
    def robust(self) -> float:
        """The reduced model's robust accuracy: the worse of the transferred and the straight-through attack."""
        return min(self.transfer_robust, self.bpda_robust)


class PrecisionInfo(StrictModel):
    """The card's `precision` section: what the server loads and why (cards before issue 26: fp32, nothing measured)."""

    served: Precision = "fp32"
    exported: tuple[Precision, ...] = ("fp32",)
    method: str = ""
    parity: Optional[PrecisionParity] = None
    accuracy: tuple[PrecisionAccuracy, ...] = ()
    max_drop_points: float = MAX_DROP_POINTS
    chosen_by: str = "fp32: the exported encoder"

    @property
    def served_file(self) -> str:
        """The bundle file the server loads as its image encoder."""
        return encoder_file(self.served)


def precision_drops(a: PrecisionAccuracy) -> dict[str, tuple[float, float]]:
    """(reduced, fp32) accuracy per kind, `clean` and `robust` (the worse of transfer and BPDA): what the rule compares."""
    return {"clean": (a.clean, a.fp32_clean), "robust": (a.robust, a.fp32_robust)}


def drop_problem(ours: float, fp32: float, max_drop_points: float = MAX_DROP_POINTS) -> str:
    """'' when `ours` is at most `max_drop_points` (accuracy points) below `fp32`, else why not."""
    drop = 100 * (fp32 - ours)
    return f"drop {drop:.1f} > {max_drop_points:g} points vs fp32" if drop > max_drop_points else ""


def precision_problems(accuracy: tuple[PrecisionAccuracy, ...], max_drop_points: float = MAX_DROP_POINTS) -> list[str]:
    """Why a reduced precision may not serve by default (empty: it may): nothing measured, or a world where it
    loses more than `max_drop_points` of clean or robust accuracy against fp32."""
    if not accuracy:
        return ["no robust-accuracy comparison with fp32 was measured"]
    problems = []
    for a in accuracy:
        for kind, (ours, fp32) in precision_drops(a).items():
            problem = drop_problem(ours, fp32, max_drop_points)
            if problem:
                problems.append(f"{a.dataset}: {kind} {100 * ours:.1f} % vs fp32 {100 * fp32:.1f} % ({problem})")
    return problems


def served_image_encoder(folder: Path, info: PrecisionInfo, cfg: RuntimeConfig) -> OnnxEncoder:
    """The image encoder session the card's `precision.served` names; ModelLoadError when its file is missing
    or it is fp16 on the CPU provider (ONNX Runtime's CPU provider has no fast fp16 path and crashes building
    an fp16 ViT session at graph optimisation `all`: docs/quantization.md)."""
    path = folder / info.served_file
    if not path.is_file():
        raise ModelLoadError(f"the model card serves the {info.served} image encoder, but {info.served_file} is missing from {folder}")
    if info.served == "fp16" and cfg.providers[0] == "cpu":
        raise ModelLoadError(
            "this bundle serves an fp16 image encoder, which needs the cuda execution provider; the configured "
            f"providers are {list(cfg.providers)} (re-export with --precision fp32 or int8 for CPU serving)"
        )
    encoder = image_encoder(path, cfg)
    if info.served == "fp16" and encoder.provider == ORT_PROVIDERS["cpu"]:
        raise ModelLoadError(f"the fp16 image encoder fell back to {encoder.provider}: fp16 serves on cuda only")
    return encoder
