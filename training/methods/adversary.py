"""Training adversaries: the PGD of docs/methods.md §0.6 (through `training.attacks.pgd.pgd_delta`) and FARE's PGD.

Randomness comes only from the `generator` argument (the fine-tuning loop derives it from
(seed, step)), so a resumed run draws the same random starts as an uninterrupted one.
"""
from __future__ import annotations

from typing import Optional

import torch

from service.config import StrictModel
from service.pixel_model import PixelCLIP
from service.zero_shot import ZeroShotClassifier
from training.attacks.pgd import pgd_delta, random_start

from .fare import clean_embedding, fare_pgd
from .frozen_reference import FrozenModel
from .registry import Method, TextHeads


def make_adversarial(
    method: Method,
    target: PixelCLIP,
    frozen: Optional[FrozenModel],
    images: torch.Tensor,
    labels: torch.Tensor,
    heads: TextHeads,
    params: StrictModel,
    eps: float,
    alpha: float,
    steps: int,
    generator: torch.Generator,
) -> Optional[torch.Tensor]:
    """Adversarial images [B,3,H,W] in [0,1] for `method`'s training step, or None (FT-Clean).

    PGD methods: CE on the method's logits (PMG-AFT: raw cosines, ImageNet normalisation) against
    the current target. FARE: momentum PGD on the embedding distance to the frozen model.
    """
    if method.attack == "none":
        return None
    init = random_start(images, eps, generator)
    if method.attack == "fare_pgd":
        if frozen is None:
            raise ValueError("FARE's attack needs the frozen original model")
        return fare_pgd(target, images, clean_embedding(frozen, images), eps, alpha, steps, init, getattr(params, "momentum", 0.9))
    view, scale = method.attack_view(target, params) if method.attack_view else (target, target.logit_scale)
    classifier = ZeroShotClassifier(view, heads.classes, logit_scale=scale)
    return images + pgd_delta(classifier, images, labels, eps, alpha, steps, init)
