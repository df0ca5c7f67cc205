"""Validation accuracy of a model during tuning: clean and PGD top-1 on the `val` split, never `test`.

Every data set a tuning objective reads comes through `validation_request`, whose split is fixed to
`VALIDATION_SPLIT` (tests/unit/test_tuning.py intercepts `build_dataset` to prove it). Fine-tuning
trains the image tower only, so each set's class text head is computed once, from the base model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, cast

import torch

from clipshield.datasets import DatasetRequest, build_dataset
from clipshield.datasets.registry import InMemoryDataset
from clipshield.evaluation.measure import AttackRecipe, measure
from clipshield.models.pixel_model import PixelCLIP
from clipshield.models.zero_shot import ZeroShotClassifier, build_text_head

VALIDATION_SPLIT = "val"


@dataclass(frozen=True)
class ValidationSet:
    """Images float [N, 3, S, S] in [0, 1], labels int64 [N] and the class text head [C, E] of one validation set."""

    name: str
    images: torch.Tensor
    labels: torch.Tensor
    head: torch.Tensor

    def first(self, n: int) -> ValidationSet:
        return ValidationSet(self.name, self.images[:n], self.labels[:n], self.head)


def validation_request(model: PixelCLIP, limit: int, root: Optional[Path]) -> DatasetRequest:
    """The request of every validation read: split `val`, the model's own preprocessing, `limit` images."""
    return DatasetRequest(root=root, split=VALIDATION_SPLIT, limit=limit, preprocess=model.record.preprocess)


def load_validation(name: str, model: PixelCLIP, limit: int, root: Optional[Path] = None) -> ValidationSet:
    """`limit` images of data set `name`'s validation split, held in memory (mini world or image folder), and
    its text head from `model`'s (frozen) text tower."""
    ds = build_dataset(name, validation_request(model, limit, root))
    if hasattr(ds, "images"):  # an in-memory set (the mini world): all images and labels at once
        memory = cast(InMemoryDataset, ds)
        images = memory.images()
        labels = torch.as_tensor(list(memory.labels), dtype=torch.int64)
    else:
        items = [ds[i] for i in range(min(len(ds), limit))]  # type: ignore[arg-type]
        images = torch.stack([img for img, _ in items])
        labels = torch.as_tensor([int(y) for _, y in items], dtype=torch.int64)
    head = build_text_head(model, list(ds.classnames), list(ds.templates))
    return ValidationSet(name, images[:limit], labels[:limit], head)


def accuracies(model: PixelCLIP, sets: Sequence[ValidationSet], eps: float, steps: int, seed: int = 0) -> dict[str, tuple[float, float]]:
    """{set name: (clean top-1, PGD-`steps` top-1 at `eps`)} of `model`; its train/eval mode is restored."""
    was_training = model.training
    try:
        out = {}
        for vs in sets:
            clf = ZeroShotClassifier(model, vs.head).eval()
            clean, robust, _ = measure(clf, vs.images, vs.labels, AttackRecipe(eps=eps, steps=steps), seed=seed)
            out[vs.name] = (clean, robust)
        return out
    finally:
        model.train(was_training)
