"""Mixed precision for model forwards: bf16/fp16 autocast as an option, float32 by default.

Attacks stay float32 unless asked: low precision can round small input gradients to zero and so
weaken an attack without anyone noticing (a robustness number that is too high). fp16 needs a
GPU (CPU autocast supports bf16 only); bf16 runs on CPU too, which is how the tests exercise it.
"""

from __future__ import annotations

import contextlib
from typing import Literal

import torch
from torch import nn

from clipshield.service.errors import ConfigError

Precision = Literal["fp32", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")


def check_precision(device: str, precision: str) -> None:
    """ConfigError for an unknown precision or fp16 on a CPU device."""
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "fp16" and not device.startswith("cuda"):
        raise ConfigError("precision fp16 needs a CUDA device; on CPU choose bf16 or fp32")


def autocast(device: str, precision: str) -> contextlib.AbstractContextManager:
    """Autocast context for `precision` on `device` (a no-op for fp32)."""
    check_precision(device, precision)
    if precision == "fp32":
        return contextlib.nullcontext()
    kind = "cuda" if device.startswith("cuda") else "cpu"
    return torch.autocast(kind, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


class AutocastClassifier(nn.Module):
    """A classifier whose forward runs under autocast and returns float32 logits.

    Tensor contract: images float32 [B, 3, H, W] in [0, 1] -> logits float32 [B, C].
    """

    def __init__(self, classifier: nn.Module, device: str, precision: str) -> None:
        super().__init__()
        check_precision(device, precision)
        self.classifier = classifier
        self.device_name = device
        self.precision = precision

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with autocast(self.device_name, self.precision):
            return self.classifier(images).float()


def with_precision(classifier: nn.Module, device: str, precision: str) -> nn.Module:
    """`classifier` itself for fp32, else wrapped in `AutocastClassifier`."""
    return classifier if precision == "fp32" else AutocastClassifier(classifier, device, precision)
