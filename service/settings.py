"""Serving settings: decode limits, ONNX Runtime threads, request defaults, as pydantic records.

Read once when a serving adapter starts (from the archive's `serving.json` plus any overrides the
adapter passes) and never mutated; every limit and default lives here, not in code.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from clipshield.service.config import StrictModel
from clipshield.service.errors import ConfigError

Provider = Literal["cuda", "cpu"]
ProviderPolicy = Literal["fail", "fallback"]
PROVIDERS: tuple[str, ...] = ("cuda", "cpu")
POLICIES: tuple[str, ...] = ("fail", "fallback")


class DecodeLimits(StrictModel):
    """Limits checked before and while decoding an image (issue 7: reject early, never crash).

    `max_pixels` is checked from the image header, before any pixel is decoded, so a
    decompression bomb is refused without allocating its buffer.
    """

    max_bytes: int = Field(default=8 * 1024 * 1024, gt=0)
    max_pixels: int = Field(default=24_000_000, gt=0)
    # Resizing the shortest side to the model's input first multiplies the pixel count by the aspect
    # ratio (a 1 x 24 M strip would become 224 x 5.4 G), so extreme strips are refused up front.
    max_aspect_ratio: float = Field(default=50.0, ge=1.0)
    formats: tuple[Literal["PNG", "JPEG"], ...] = ("PNG", "JPEG")


class RuntimeConfig(StrictModel):
    """ONNX Runtime session options; thread counts come from here, never from the host's core count.

    `providers`: execution providers in order of preference (`cuda` = CUDAExecutionProvider,
    `cpu` = CPUExecutionProvider). `provider_policy` when one is missing from the installed
    onnxruntime: `fail` refuses to load, naming it; `fallback` warns and continues on the next.
    """

    intra_op_threads: int = Field(default=1, ge=1, le=256)
    inter_op_threads: int = Field(default=1, ge=1, le=256)
    graph_optimization: Literal["disable", "basic", "extended", "all"] = "all"
    io_binding: bool = False
    providers: tuple[Provider, ...] = Field(default=("cpu",), min_length=1)
    provider_policy: ProviderPolicy = "fail"


class RequestLimits(StrictModel):
    """Bounds on per-request options (custom label sets are encoded on the request path)."""

    max_labels: int = Field(default=256, ge=1)
    max_label_chars: int = Field(default=200, ge=1)
    max_top_k: int = Field(default=100, ge=1)
    default_top_k: int = Field(default=5, ge=1)


class AttackScoreServing(StrictModel):
    """The attack score on the served path (model card `attack_score`): in the answer of a request that asks
    (`attack_score` field), else when `default` is on. A score with squeezers or noise runs only then (one extra
    encoder pass per squeezer, `n_noise` for tau); one of free signals (anchor, margin) runs on every request,
    since `flagged` is its decision.
    `seed` is mixed into each image's noise seed (a digest of its pixels), so answers are reproducible."""

    default: bool = False
    seed: int = Field(default=0, ge=-(2**63), lt=2**63)


class ServingConfig(StrictModel):
    """Everything a serving adapter configures; defaults suit the mini world and ViT-B/32 alike.

    `flagged` needs no setting here: it is the decision of the model card's detector
    (`clipshield.service.card.AttackScoreCalibration`), on every request when its signals are free.
    """

    decode: DecodeLimits = DecodeLimits()
    runtime: RuntimeConfig = RuntimeConfig()
    requests: RequestLimits = RequestLimits()
    label_cache_size: int = Field(default=64, ge=1)
    attack_score: AttackScoreServing = AttackScoreServing()
    verify_checksums: bool = True


THREADS_ENV = "CLIPSHIELD_ORT_THREADS"
PROVIDERS_ENV = "CLIPSHIELD_ORT_PROVIDERS"
POLICY_ENV = "CLIPSHIELD_ORT_PROVIDER_POLICY"


def parse_providers(raw: str) -> tuple[str, ...]:
    """`"cuda,cpu"` -> ("cuda", "cpu"); ConfigError naming the allowed values on anything else."""
    names = tuple(p.strip().lower() for p in raw.split(",") if p.strip())
    bad = [n for n in names if n not in PROVIDERS]
    if not names or bad or len(set(names)) != len(names):
        raise ConfigError(f"execution providers must be a comma-separated list of distinct values from {list(PROVIDERS)}, got {raw!r}")
    return names


def parse_policy(raw: str) -> str:
    """`fail` or `fallback`; ConfigError naming the allowed values on anything else."""
    value = raw.strip().lower()
    if value not in POLICIES:
        raise ConfigError(f"execution provider policy must be one of {list(POLICIES)}, got {raw!r}")
    return value


def _runtime_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """RuntimeConfig fields set by the deployment's environment (empty variables are ignored)."""
    update: dict[str, Any] = {}
    raw = environ.get(THREADS_ENV, "").strip()
    if raw:
        try:
            update["intra_op_threads"] = int(raw)
        except ValueError as exc:
            raise ValueError(f"{THREADS_ENV} must be a positive integer, got {raw!r}") from exc
    if environ.get(PROVIDERS_ENV, "").strip():
        update["providers"] = parse_providers(environ[PROVIDERS_ENV])
    if environ.get(POLICY_ENV, "").strip():
        update["provider_policy"] = parse_policy(environ[POLICY_ENV])
    return update


def load_serving_config(path: Path, environ: Mapping[str, str]) -> ServingConfig:
    """Serving settings from `serving.json` (defaults if absent), with the deployment's overrides.

    The one place serving reads the environment: `CLIPSHIELD_ORT_THREADS` (set from the container's
    CPU limit in k8s/) replaces the archive's ONNX Runtime intra-op thread count;
    `CLIPSHIELD_ORT_PROVIDERS` (e.g. `cuda,cpu`, set by the GPU image and overlay) and
    `CLIPSHIELD_ORT_PROVIDER_POLICY` (`fail` or `fallback`) replace the archive's execution providers.
    """
    config = ServingConfig.model_validate_json(path.read_text()) if path.is_file() else ServingConfig()
    update = _runtime_overrides(environ)
    if not update:
        return config
    runtime = config.runtime.model_copy(update=update)
    return config.model_copy(update={"runtime": RuntimeConfig.model_validate(runtime.model_dump())})
