"""Zero-shot top-1 accuracy of a classifier on a data set, clean or under an attack."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Optional

import torch

from clipshield.models.sharding import SINGLE, Shard, own_batches, sum_counts

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
    return sharded_accuracy(classifier, data, None if attack is None else (lambda _index: attack), on_batch)


def sharded_accuracy(
    classifier: Callable[[torch.Tensor], torch.Tensor],
    data: Iterable[tuple[torch.Tensor, torch.Tensor]],
    attack_for: Optional[Callable[[int], Attack]] = None,
    on_batch: Optional[Callable[[int], None]] = None,
    shard: Shard = SINGLE,
) -> tuple[float, int]:
    """`accuracy` over this rank's batches, summed over ranks; `attack_for(b)` attacks batch b.

    With one process and one attack for every batch this is plain `accuracy`; under torchrun each
    rank takes batches b with b mod world == rank and the counts are all-reduced, so every rank
    returns the single-process numbers when `attack_for(b)` depends only on b.
    """
    correct = 0
    total = 0
    for index, images, labels in own_batches(data, shard):
        if attack_for is not None:
            images = attack_for(index)(images, labels)
        with torch.no_grad():
            pred = classifier(images).argmax(dim=-1)
        correct += int((pred == labels).sum())
        total += int(labels.numel())
        if on_batch is not None:
            on_batch(int(labels.numel()))
    correct, total = sum_counts([correct, total], shard)
    return (correct / total if total else float("nan")), total
