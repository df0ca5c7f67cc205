"""ONNX Runtime sessions for the exported image and text encoders.

Threads, graph optimisation and execution providers come from `RuntimeConfig` (never from the
host's core count: a serving host runs several workers side by side). Providers are tried in the
configured order; a missing one fails the load or, with policy `fallback`, is skipped with a
warning, and the provider a session really runs on is checked after creation (ONNX Runtime falls
back to CPU by itself when, say, CUDA libraries fail to load). Input names are the export contract:
image encoder `pixels` float32 [B, 3, S, S] in [0, 1] -> `embedding` float32 [B, E] (unit norm);
text encoder `token_ids` int64 [N, L] -> `embedding` float32 [N, E] (unit norm).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from clipshield.service.errors import ModelLoadError
from clipshield.service.settings import POLICY_ENV, RuntimeConfig

if TYPE_CHECKING:
    import onnxruntime as ort

log = logging.getLogger(__name__)

IMAGE_INPUT = "pixels"
TEXT_INPUT = "token_ids"
OUTPUT = "embedding"
ORT_PROVIDERS = {"cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}
ORT_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu")
_HINTS = {"cuda": "CUDAExecutionProvider needs the onnxruntime-gpu package (the GPU image) and a visible NVIDIA GPU"}


def onnxruntime_package() -> str:
    """Installed ONNX Runtime distribution(s) with versions, e.g. 'onnxruntime 1.20.1' or 'onnxruntime-gpu 1.20.1'."""
    found = []
    for dist in ORT_DISTRIBUTIONS:
        try:
            found.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            continue
    return ", ".join(found) or "no onnxruntime distribution found"


def _missing(name: str, cfg: RuntimeConfig, available: Sequence[str], why: str) -> str:
    hint = f" ({_HINTS[name]})" if name in _HINTS else ""
    return (
        f"execution provider {name!r} ({ORT_PROVIDERS[name]}) {why}{hint}; available: {list(available)}; "
        f"installed: {onnxruntime_package()}; requested: {list(cfg.providers)} with policy {cfg.provider_policy!r} "
        f"(policies: 'fail', 'fallback'; {POLICY_ENV}=fallback continues on the next provider)"
    )


def select_providers(cfg: RuntimeConfig, available: Sequence[str]) -> list[str]:
    """ONNX Runtime provider names to create a session with, in the configured order.

    A requested provider missing from `available` raises ModelLoadError (policy `fail`) or is
    skipped with a warning (`fallback`); nothing left to run on always raises.
    """
    chosen = []
    for name in cfg.providers:
        if ORT_PROVIDERS[name] in available:
            chosen.append(ORT_PROVIDERS[name])
        elif cfg.provider_policy == "fail":
            raise ModelLoadError(_missing(name, cfg, available, "is not available"))
        else:
            log.warning("%s; falling back to the next provider", _missing(name, cfg, available, "is not available"))
    if not chosen:
        raise ModelLoadError(
            f"none of the requested execution providers {list(cfg.providers)} is available; "
            f"available: {list(available)}; installed: {onnxruntime_package()}"
        )
    return chosen


def session_options(cfg: RuntimeConfig) -> ort.SessionOptions:
    """`onnxruntime.SessionOptions` from a RuntimeConfig."""
    import onnxruntime as ort

    levels = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    so = ort.SessionOptions()
    so.intra_op_num_threads = cfg.intra_op_threads
    so.inter_op_num_threads = cfg.inter_op_threads
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = levels[cfg.graph_optimization]
    so.log_severity_level = 3
    return so


def _check_active(path: Path, cfg: RuntimeConfig, wanted: str, active: str) -> None:
    """ONNX Runtime silently drops a provider it cannot initialise: apply the policy to that too."""
    if active == wanted:
        return
    name = next(k for k, v in ORT_PROVIDERS.items() if v == wanted)
    message = _missing(name, cfg, [active], f"could not be initialised for {path.name}, ONNX Runtime chose {active}")
    if cfg.provider_policy == "fail":
        raise ModelLoadError(message)
    log.warning("%s; continuing on %s", message, active)


class OnnxEncoder:
    """One ONNX encoder on the configured execution providers; `__call__` maps a batch to embeddings.

    `provider` is the provider the session actually runs on (ONNX Runtime name).
    """

    def __init__(self, path: Path, input_name: str, cfg: RuntimeConfig) -> None:
        import onnxruntime as ort

        providers = select_providers(cfg, ort.get_available_providers())
        try:
            self.session = ort.InferenceSession(str(path), session_options(cfg), providers=providers)
        except Exception as exc:
            raise ModelLoadError(f"could not load ONNX model {path.name}: {exc}") from exc
        self.provider: str = self.session.get_providers()[0]
        _check_active(path, cfg, providers[0], self.provider)
        log.info(
            "%s runs on %s (requested %s, policy %s; %s)",
            path.name,
            self.provider,
            ",".join(cfg.providers),
            cfg.provider_policy,
            onnxruntime_package(),
        )
        names = [i.name for i in self.session.get_inputs()]
        if names != [input_name]:
            raise ModelLoadError(f"{path.name} has inputs {names}; expected [{input_name!r}]")
        self.input_name = input_name
        self.io_binding = cfg.io_binding
        self.path = path

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """Embeddings [B, E] float32 for a batch (float32 pixels or int64 token ids)."""
        # onnxruntime ships no type information: its outputs are typed here.
        if not self.io_binding:
            out: np.ndarray = self.session.run([OUTPUT], {self.input_name: batch})[0]
            return out
        binding = self.session.io_binding()
        binding.bind_cpu_input(self.input_name, np.ascontiguousarray(batch))
        binding.bind_output(OUTPUT)
        self.session.run_with_iobinding(binding)
        bound_out: np.ndarray = binding.copy_outputs_to_cpu()[0]
        return bound_out


def image_encoder(path: Path, cfg: RuntimeConfig) -> OnnxEncoder:
    """Session for an exported image encoder."""
    return OnnxEncoder(path, IMAGE_INPUT, cfg)


def text_encoder(path: Path, cfg: RuntimeConfig) -> OnnxEncoder:
    """Session for an exported text encoder."""
    return OnnxEncoder(path, TEXT_INPUT, cfg)
