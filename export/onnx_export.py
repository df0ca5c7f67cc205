"""ONNX export of a PixelCLIP's image and text encoders, with a parity check against PyTorch.

The image encoder is `PixelCLIP.forward` ([0, 1] pixels -> unit-norm embedding; normalisation is
inside the graph) at the record's image size; the text encoder maps token ids to unit-norm
embeddings so callers can send their own labels. Both have a dynamic batch axis; the exporter is
given an example batch of 2 because a batch of 1 silently fixes the axis, and parity is checked
at batch 1 and 8. The TorchScript-based exporter (`dynamo=False`) is used: the dynamo exporter
needs `onnxscript`, which is not a dependency. Weights are embedded in each .onnx file (protobuf's
2 GB limit holds every CLIP image tower up to ViT-L/14).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from clipshield.models.pixel_model import PixelCLIP
from clipshield.service import bundle as B
from clipshield.service.errors import ExportError
from clipshield.service.runtime import IMAGE_INPUT, OUTPUT, TEXT_INPUT, image_encoder, text_encoder
from clipshield.service.settings import RuntimeConfig

log = logging.getLogger(__name__)

OPSET = 17
PARITY_TOLERANCE = 1e-4
EXAMPLE_BATCH = 2


class TextTower(nn.Module):
    """Token ids [N, L] int64 -> unit-norm text embeddings [N, E] (the exported text graph)."""

    def __init__(self, model: PixelCLIP) -> None:
        super().__init__()
        self.model = model

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(token_ids, normalize=True)


def _export(module: nn.Module, example: torch.Tensor, path: Path, input_name: str) -> Path:
    # nn.MultiheadAttention's inference fast path (no grad) traces to an op ONNX cannot express;
    # the switch is process-wide, so it is restored right after the export.
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        return _trace_export(module, example, path, input_name)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


def _trace_export(module: nn.Module, example: torch.Tensor, path: Path, input_name: str) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about shape checks that are constant here
        torch.onnx.export(
            module,
            (example,),
            str(path),
            dynamo=False,
            input_names=[input_name],
            output_names=[OUTPUT],
            dynamic_axes={input_name: {0: "batch"}, OUTPUT: {0: "batch"}},
            opset_version=OPSET,
        )
    return path


def export_image_encoder(model: PixelCLIP, path: Path) -> Path:
    """Write the image encoder ONNX: `pixels` float32 [B, 3, S, S] in [0, 1] -> `embedding` [B, E]."""
    size = model.image_size
    example = torch.rand(EXAMPLE_BATCH, 3, size, size, generator=torch.Generator().manual_seed(0))
    return _export(model, example, path, IMAGE_INPUT)


def export_text_encoder(model: PixelCLIP, path: Path) -> Path:
    """Write the text encoder ONNX: `token_ids` int64 [N, L] -> `embedding` [N, E]."""
    example = model.tokenize(["a photo of a thing", "a photo of a ."])
    return _export(TextTower(model), example, path, TEXT_INPUT)


@torch.no_grad()
def check_parity(model: PixelCLIP, folder: Path, prompts: list[str], tolerance: float = PARITY_TOLERANCE) -> B.ParityReport:
    """Max abs diff of ORT vs PyTorch embeddings (images at batch 1 and 8, text); ExportError above `tolerance`."""
    cfg = RuntimeConfig(intra_op_threads=max(1, torch.get_num_threads()))
    img = image_encoder(folder / B.IMAGE_ONNX, cfg)
    txt = text_encoder(folder / B.TEXT_ONNX, cfg)
    gen = torch.Generator().manual_seed(1)
    size = model.image_size
    diffs = {}
    for batch in (1, 8):
        x = torch.rand(batch, 3, size, size, generator=gen)
        ours = img(x.numpy())
        if ours.shape != (batch, model(x).shape[1]):
            raise ExportError(f"exported image encoder returned shape {ours.shape} for batch {batch}")
        diffs[batch] = float(np.abs(ours - model(x).numpy()).max())
    tokens = model.tokenize(prompts)
    text_diff = float(np.abs(txt(tokens.numpy()) - model.encode_text(tokens, normalize=True).numpy()).max())
    report = B.ParityReport(image_batch_1=diffs[1], image_batch_8=diffs[8], text=text_diff, tolerance=tolerance, opset=OPSET)
    worst = max(diffs[1], diffs[8], text_diff)
    if not worst <= tolerance:
        raise ExportError(f"ONNX parity failed: max abs diff {worst:.2e} exceeds {tolerance:.0e} ({report})")
    log.info("ONNX parity: image b1 %.2e, b8 %.2e, text %.2e (tolerance %.0e)", diffs[1], diffs[8], text_diff, tolerance)
    return report
