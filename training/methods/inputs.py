"""The typed contract between the fine-tuning loop, the training adversaries and the method losses.

A method's loss is `loss(batch: LossInputs, params) -> LossOutput`; its adversary is
`adversary.perturb(batch, params, budget, generator) -> adversarial images or None`. Everything a
step knows (models, images, labels, text heads, the frozen model's memory for this batch) travels
in one `LossInputs`, so no loss depends on state set up elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional

import torch

from clipshield.models.pixel_model import PixelCLIP
from clipshield.training.methods.frozen_reference import FrozenBatch


@dataclass(frozen=True)
class TextHeads:
    """Class text embeddings computed once per run by the frozen text tower.

    `classes` [C, E] unit-norm embeddings of the training prompt per class; `negatives` [C, E] the
    Comp-TGA negative prompts ("This is not a photo of a {}"), or None when unused.
    """

    classes: torch.Tensor
    negatives: Optional[torch.Tensor] = None


@dataclass(frozen=True)
class LossInputs:
    """One training step's inputs.

    Tensor contract: `images` float [B,3,H,W] in [0,1] (clean), `labels` int64 [B], `adv` the
    adversarial images [B,3,H,W] in [0,1] or None (FT-Clean, or before the attack ran). `frozen` is
    the frozen original model for this batch (`FrozenBatch`: phi plus its memory of clean outputs,
    keyed by the batch's data set indices), or None for methods that do not use one.
    """

    target: PixelCLIP
    images: torch.Tensor
    labels: torch.Tensor
    heads: TextHeads
    adv: Optional[torch.Tensor] = None
    frozen: Optional[FrozenBatch] = None

    def with_adv(self, adv: Optional[torch.Tensor]) -> LossInputs:
        """The same step with its adversarial images."""
        return replace(self, adv=adv)

    def require_adv(self, method: str) -> torch.Tensor:
        """The adversarial images; ValueError (a caller bug, not user input) naming `method` when absent."""
        if self.adv is None:
            raise ValueError(f"{method} needs adversarial images")
        return self.adv

    def require_frozen(self, method: str) -> FrozenBatch:
        """The frozen model for this batch; ValueError naming `method` when absent."""
        if self.frozen is None:
            raise ValueError(f"{method} needs the frozen original model")
        return self.frozen

    def require_negatives(self, method: str) -> torch.Tensor:
        """The negative prompt embeddings [C, E]; ValueError naming `method` when absent."""
        if self.heads.negatives is None:
            raise ValueError(f"{method} needs negative prompt embeddings (TextHeads.negatives)")
        return self.heads.negatives


@dataclass(frozen=True)
class AttackBudget:
    """The training attack's L-inf radius `eps`, step size `alpha` (pixel units) and iterations `steps`."""

    eps: float
    alpha: float
    steps: int


@dataclass
class LossOutput:
    """`total` (the value back-propagated), named loss `terms` and detached diagnostic `outputs`."""

    total: torch.Tensor
    terms: dict[str, torch.Tensor]
    outputs: dict[str, torch.Tensor] = field(default_factory=dict)
