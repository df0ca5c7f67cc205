"""Zero-shot top-1 accuracy of a classifier on a data set, clean or under an attack."""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Optional

import torch

Attack = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def batches(images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """Consecutive (images, labels) slices of at most `batch_size`."""
    for i in range(0, len(labels), batch_size):
        yield images[i : i + batch_size], labels[i : i + batch_size]


def accuracy(
    classifier: Callable[[torch.Tensor], torch.Tensor],
    data: Iterable[tuple[torch.Tensor, torch.Tensor]],
    attack: Optional[Attack] = None,
    on_batch: Optional[Callable[[int], None]] = None,
) -> tuple[float, int]:
    """(top-1 accuracy, n) over `data`; when `attack` is given, on its adversarial images.

    Tensor contract: `data` yields float images [B, 3, H, W] in [0, 1] and int64 labels [B].
    """
    correct = 0
    total = 0
    for images, labels in data:
        if attack is not None:
            images = attack(images, labels)
        with torch.no_grad():
            pred = classifier(images).argmax(dim=-1)
        correct += int((pred == labels).sum())
        total += int(labels.numel())
        if on_batch is not None:
            on_batch(int(labels.numel()))
    return (correct / total if total else float("nan")), total
