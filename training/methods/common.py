"""Pieces shared by the method losses: scaled cosine logits and the batched clean+adversarial forward."""

from __future__ import annotations

import torch

from clipshield.models.pixel_model import PixelCLIP
from clipshield.models.zero_shot import cosine_logits  # noqa: F401 - the methods' logits (one torch implementation)
from clipshield.service.config import IMAGENET_MEAN, IMAGENET_STD


def paired_embeddings(model: PixelCLIP, images: torch.Tensor, adv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Clean and adversarial embeddings [B, E] from one forward over [clean; adversarial] (the batching the
    reference does not do). Tensor contract: images/adv float [B, 3, H, W] in [0, 1]."""
    pooled = model.encode_image(torch.cat([images, adv]))
    n = images.shape[0]
    return pooled[:n], pooled[n:]


def paired_tokens(
    model: PixelCLIP, images: torch.Tensor, adv: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """`paired_embeddings` plus the tokens [B, 1+P, E] (`PixelCLIP.encode_image_with_tokens`), in one forward:
    (clean embeddings, adversarial embeddings, clean tokens, adversarial tokens)."""
    pooled, toks = model.encode_image_with_tokens(torch.cat([images, adv]))
    n = images.shape[0]
    return pooled[:n], pooled[n:], toks[:n], toks[n:]


def imagenet_view(model: PixelCLIP) -> PixelCLIP:
    """The same CLIP (shared weights) normalising with ImageNet constants, as PMG-AFT's code does (docs/methods.md §0.2)."""
    pre = model.record.preprocess.model_copy(update={"mean": IMAGENET_MEAN, "std": IMAGENET_STD})
    return PixelCLIP(model.clip, model.record.model_copy(update={"preprocess": pre})).to(model.mean.device)
