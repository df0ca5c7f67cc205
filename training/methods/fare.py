"""FARE: unsupervised adversarial fine-tuning of the image encoder (Schlarmann et al., ICML 2024; docs/methods.md §6).

L = (1/B) sum_b ||f_theta(x_adv,b) - f_phi(x_b)||_2^2 on unnormalised embeddings; x_adv maximises the
same loss with FARE's own momentum PGD (`fare_pgd`, RobustVLM train/pgd_train.py). No text, no labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from pydantic import Field

from clipshield.attacks.pgd import random_start
from clipshield.models.pixel_model import PixelCLIP
from clipshield.service.config import StrictModel
from clipshield.training.methods.frozen_reference import FrozenBatch
from clipshield.training.methods.inputs import AttackBudget, LossInputs, LossOutput
from clipshield.training.methods.registry import register_method


class FAREParams(StrictModel):
    """FARE's PGD momentum (its 10 steps and step size eps/4 are the run's attack settings)."""

    momentum: float = Field(default=0.9, ge=0, lt=1)


def embedding_loss(embeddings: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of the squared L2 distance between embeddings [B, E]."""
    return ((embeddings - reference) ** 2).sum(dim=1).mean()


def clean_embedding(frozen: FrozenBatch, images: torch.Tensor) -> torch.Tensor:
    """f_phi(x) [B, E]: the frozen model's clean embedding, shared by FARE's attack and loss (and
    remembered per training image across epochs)."""
    return frozen.clean("embedding", images, lambda model, rows: model.encode_image(images[rows]))


def fare_pgd(
    model: PixelCLIP,
    images: torch.Tensor,
    reference: torch.Tensor,
    eps: float,
    alpha: float,
    steps: int,
    init: torch.Tensor,
    momentum: float = 0.9,
) -> torch.Tensor:
    """FARE's L-inf PGD: sign gradient, velocity v = sign(m*v + g), delta clipped to eps and to the box.

    The random start `init` is NOT clipped to the image box before the first forward (reference,
    PITFALL 10). Returns adversarial images [B,3,H,W] in [0,1]; `reference` [B, E] is f_phi(x).
    """
    delta = init.detach().clone()
    velocity = torch.zeros_like(images)
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = embedding_loss(model.encode_image(images + delta), reference)
        (grad,) = torch.autograd.grad(loss, delta)
        velocity = torch.sign(momentum * velocity + grad.sign())
        delta = torch.clamp(delta.detach() + alpha * velocity, -eps, eps)
        delta = torch.clamp(images + delta, 0, 1) - images
    return (images + delta).detach()


@dataclass(frozen=True)
class FareAdversary:
    """FARE's training attack: `fare_pgd` away from the frozen model's clean embedding; step size eps/4 by default."""

    kind: str = "fare_pgd"
    alpha_per_eps: float = 0.25

    def perturb(self, batch: LossInputs, params: StrictModel, budget: AttackBudget, generator: torch.Generator) -> Optional[torch.Tensor]:
        """Adversarial images [B,3,H,W] in [0,1]; needs `batch.frozen`."""
        init = random_start(batch.images, budget.eps, generator)
        reference = clean_embedding(batch.require_frozen("FARE's attack"), batch.images)
        momentum = params.momentum if isinstance(params, FAREParams) else FAREParams().momentum
        return fare_pgd(batch.target, batch.images, reference, budget.eps, budget.alpha, budget.steps, init, momentum)


FARE_ADVERSARY = FareAdversary()


@register_method(
    "fare", params=FAREParams, adversary=FARE_ADVERSARY, needs_frozen=True, lr=1e-5, attack_steps=10, optimizer="adamw", weight_decay=1e-4
)
def fare_loss(batch: LossInputs, params: FAREParams) -> LossOutput:
    """FARE: keep adversarial embeddings close to the original model's clean embeddings.

    FARE loss (labels and heads unused); `batch.frozen` and `batch.adv` required.
    """
    reference = clean_embedding(batch.require_frozen("FARE"), batch.images)
    emb_adv = batch.target.encode_image(batch.require_adv("FARE"))
    loss = embedding_loss(emb_adv, reference)
    return LossOutput(loss, {"l2": loss}, {"embedding_adv_target": emb_adv.detach(), "embedding_orig_clean": reference})
