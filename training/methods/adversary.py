"""Training adversaries: each method carries one (`Method.adversary`); the loop only calls `perturb`.

`NO_ADVERSARY` (FT-Clean), `ClassifierPGD` (the PGD of docs/methods.md §0.6 through
`clipshield.attacks.pgd.pgd_delta`, on the method's own view of the classifier) and FARE's embedding
PGD (`clipshield.training.methods.fare.FARE_ADVERSARY`). Randomness comes only from the `generator` argument
(the fine-tuning loop derives it from (seed, step)), so a resumed run draws the same random starts
as an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional, Protocol

import torch

from clipshield.attacks.pgd import pgd_delta, random_start
from clipshield.models.pixel_model import PixelCLIP
from clipshield.models.zero_shot import ZeroShotClassifier
from clipshield.service.config import StrictModel
from clipshield.training.methods.inputs import AttackBudget, LossInputs

# view(target, params) -> (the model as the method's classifier sees it, logit scale); params: the method's own
ClassifierView = Callable[[PixelCLIP, Any], tuple[PixelCLIP, float]]


class Adversary(Protocol):
    """How a method makes its training images adversarial.

    `kind` names the attack in model cards ("pgd", "fare_pgd", "none"); `alpha_per_eps` is the
    default step size as a fraction of eps (PGD: 1, FARE: 1/4).
    """

    kind: str
    alpha_per_eps: float

    def perturb(self, batch: LossInputs, params: StrictModel, budget: AttackBudget, generator: torch.Generator) -> Optional[torch.Tensor]:
        """Adversarial images [B,3,H,W] in [0,1] for `batch.images`, or None (no attack)."""
        ...


@dataclass(frozen=True)
class NoAdversary:
    """Clean training (FT-Clean): no adversarial images."""

    kind: str = "none"
    alpha_per_eps: float = 1.0

    def perturb(self, batch: LossInputs, params: StrictModel, budget: AttackBudget, generator: torch.Generator) -> Optional[torch.Tensor]:
        """None: the loss trains on the clean images."""
        return None


@dataclass(frozen=True)
class ClassifierPGD:
    """PGD with CE on the method's zero-shot logits against the current target (docs/methods.md §0.6).

    `view` gives the classifier the method itself uses (PMG-AFT: raw cosines, ImageNet
    normalisation); None: the target with its own logit scale.
    """

    view: Optional[ClassifierView] = None
    kind: str = "pgd"
    alpha_per_eps: float = 1.0

    def perturb(self, batch: LossInputs, params: StrictModel, budget: AttackBudget, generator: torch.Generator) -> Optional[torch.Tensor]:
        """images + delta, |delta| <= eps, from a uniform random start drawn from `generator`."""
        images, target = batch.images, batch.target
        init = random_start(images, budget.eps, generator)
        model, scale = self.view(target, params) if self.view else (target, target.logit_scale)
        classifier = ZeroShotClassifier(model, batch.heads.classes, logit_scale=scale)
        return images + pgd_delta(classifier, images, batch.labels, budget.eps, budget.alpha, budget.steps, init)


NO_ADVERSARY = NoAdversary()
PGD_ADVERSARY = ClassifierPGD()
