"""Clean and attacked top-1 of a classifier: the one measurement under every evaluation cell and every
quick measurement (demo, purification sweep, flag calibration, tests).

`AttackRecipe` is the one place attack settings become an attack; `clean_and_attacked` measures over
batches (sharded under torchrun); `measure`, `clean_top1` and `zero_shot_task` are the in-memory, single-process
shortcuts the quick measurements use. The resumable, cached cells are `clipshield.evaluation.runner`'s.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Optional

import torch
from pydantic import Field

from clipshield.attacks import get_attack
from clipshield.attacks.base import Attack
from clipshield.attacks.pgd import StopRule
from clipshield.datasets import DatasetRequest
from clipshield.datasets.registry import InMemoryDataset, build_in_memory_dataset
from clipshield.evaluation.schema import CellKey
from clipshield.evaluation.zeroshot import batches, sharded_accuracy
from clipshield.models.pixel_model import PixelCLIP
from clipshield.models.sharding import SINGLE, Shard
from clipshield.models.zero_shot import ZeroShotClassifier, build_text_head
from clipshield.service.config import StrictModel

EARLY_STOP_ATTACKS = ("pgd", "cw")  # attacks whose early stop is exact (per-sample sign steps); see clipshield.attacks.pgd


class AttackRecipe(StrictModel):
    """One attack as the runner builds it: a registry name and the settings that change its images.

    The one place attack keyword arguments are assembled, for evaluation cells and for the quick
    measurements of the demo, the purification sweep and the flag calibration.
    """

    name: str = "pgd"
    eps: float = Field(ge=0)
    steps: int = Field(ge=0)
    alpha: Optional[float] = None
    restarts: int = Field(default=1, ge=1)
    stop: StopRule = "final"

    @classmethod
    def of_cell(cls, key: CellKey) -> AttackRecipe:
        return cls(name=key.attack, eps=key.eps, steps=key.steps, alpha=key.alpha, restarts=key.restarts, stop=key.stop)

    def build(self, classifier: Callable[[torch.Tensor], torch.Tensor], generator: torch.Generator) -> Attack:
        """The attack on `classifier`, drawing random starts from `generator`."""
        kwargs: dict[str, Any] = {"eps": self.eps, "steps": self.steps, "restarts": self.restarts, "generator": generator}
        if self.alpha is not None:
            kwargs["alpha"] = self.alpha
        if self.name in EARLY_STOP_ATTACKS:
            kwargs["stop"] = self.stop
        return get_attack(self.name)(classifier, **kwargs)


Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


def clean_and_attacked(
    judge: Callable[[torch.Tensor], torch.Tensor],
    data: Callable[[], Batches],
    recipe: Optional[AttackRecipe] = None,
    target: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    generator_for: Optional[Callable[[int], torch.Generator]] = None,
    on_batch: Optional[Callable[[int], None]] = None,
    shard: Shard = SINGLE,
) -> tuple[float, Optional[float], int]:
    """(clean top-1, attacked top-1 or None without `recipe`, n) of `judge` over `data()`.

    The attack of batch b differentiates `target` (default: `judge`; e.g. a straight-through view of
    a purified classifier) and draws its random starts from `generator_for(b)` (required with a
    `recipe`; the runner seeds each batch from the cell key). Tensor contract: `data()` yields float
    images [B, 3, H, W] in [0, 1] and int64 labels [B].
    """
    clean, n = sharded_accuracy(judge, data(), on_batch=on_batch, shard=shard)
    if recipe is None:
        return clean, None, n
    if generator_for is None:
        raise ValueError("clean_and_attacked: an attack recipe needs generator_for (random starts per batch)")
    attacked = target if target is not None else judge
    robust, _ = sharded_accuracy(judge, data(), lambda b: recipe.build(attacked, generator_for(b)), on_batch=on_batch, shard=shard)
    return clean, robust, n


def measure(
    classifier: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    labels: torch.Tensor,
    recipe: AttackRecipe,
    batch_size: int = 256,
    seed: int = 0,
    target: Optional[Callable] = None,
) -> tuple[float, float, int]:
    """(clean top-1, attacked top-1, n): `clean_and_attacked` on in-memory images [N, 3, H, W] and labels [N];
    the attack's random starts come from one generator seeded `seed`, shared by all batches (a quick,
    single-process measurement)."""
    shared = torch.Generator().manual_seed(seed)
    clean, robust, n = clean_and_attacked(classifier, lambda: batches(images, labels, batch_size), recipe, target, lambda _b: shared)
    assert robust is not None  # clean_and_attacked measures the attack whenever a recipe is given
    return clean, robust, n


def clean_top1(
    classifier: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, labels: torch.Tensor, batch_size: int = 256
) -> tuple[float, int]:
    """(clean top-1, n) on in-memory images [N, 3, H, W] and labels [N]: `measure` without an attack."""
    clean, _, n = clean_and_attacked(classifier, lambda: batches(images, labels, batch_size))
    return clean, n


def zero_shot_task(model: PixelCLIP, name: str, limit: int) -> tuple[InMemoryDataset, ZeroShotClassifier, torch.Tensor]:
    """(data set, zero-shot classifier, labels int64 [N]) for `limit` images of an in-memory registered
    data set (the mini world) under the model's own preprocessing: the set-up of every quick measurement."""
    ds = build_in_memory_dataset(name, DatasetRequest(limit=limit, preprocess=model.record.preprocess))
    clf = ZeroShotClassifier(model, build_text_head(model, ds.classnames, ds.templates)).eval()
    return ds, clf, torch.as_tensor(ds.labels, dtype=torch.int64)
