"""ONNX Runtime sessions for the exported image and text encoders.

Threads and graph optimisation come from `RuntimeConfig` (never from the host's core count: a
serving host runs several workers side by side). Input names are the export contract:
image encoder `pixels` float32 [B, 3, S, S] in [0, 1] -> `embedding` float32 [B, E] (unit norm);
text encoder `token_ids` int64 [N, L] -> `embedding` float32 [N, E] (unit norm).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .errors import ModelLoadError
from .settings import RuntimeConfig

log = logging.getLogger(__name__)

IMAGE_INPUT = "pixels"
TEXT_INPUT = "token_ids"
OUTPUT = "embedding"


def session_options(cfg: RuntimeConfig):
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


class OnnxEncoder:
    """One ONNX encoder on the CPU execution provider; `__call__` maps a batch to embeddings."""

    def __init__(self, path: Path, input_name: str, cfg: RuntimeConfig) -> None:
        import onnxruntime as ort

        try:
            self.session = ort.InferenceSession(str(path), session_options(cfg), providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - ORT raises its own, untyped errors
            raise ModelLoadError(f"could not load ONNX model {path.name}: {exc}") from exc
        names = [i.name for i in self.session.get_inputs()]
        if names != [input_name]:
            raise ModelLoadError(f"{path.name} has inputs {names}; expected [{input_name!r}]")
        self.input_name = input_name
        self.io_binding = cfg.io_binding
        self.path = path

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """Embeddings [B, E] float32 for a batch (float32 pixels or int64 token ids)."""
        if not self.io_binding:
            return self.session.run([OUTPUT], {self.input_name: batch})[0]
        binding = self.session.io_binding()
        binding.bind_cpu_input(self.input_name, np.ascontiguousarray(batch))
        binding.bind_output(OUTPUT)
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]


def image_encoder(path: Path, cfg: RuntimeConfig) -> OnnxEncoder:
    """Session for an exported image encoder."""
    return OnnxEncoder(path, IMAGE_INPUT, cfg)


def text_encoder(path: Path, cfg: RuntimeConfig) -> OnnxEncoder:
    """Session for an exported text encoder."""
    return OnnxEncoder(path, TEXT_INPUT, cfg)
