"""Pieces shared by the method losses: scaled cosine logits and the batched clean+adversarial forward."""

from __future__ import annotations

from typing import Optional

import torch

from clipshield.service.config import IMAGENET_MEAN, IMAGENET_STD
from clipshield.service.pixel_model import PixelCLIP
from clipshield.service.zero_shot import cosine_logits  # noqa: F401 - the methods' logits (one torch implementation)


def paired_forward(
    model: PixelCLIP, images: torch.Tensor, adv: Optional[torch.Tensor], tokens: bool
) -> tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor], Optional[torch.Tensor]]:
    """One forward over [clean; adversarial] (the batching the reference does not do).

    Returns (clean embeddings, adversarial embeddings or None, clean tokens, adversarial tokens);
    tokens are None unless `tokens`. Tensor contract: images/adv float [B, 3, H, W] in [0, 1].
    """
    batch = images if adv is None else torch.cat([images, adv])
    if tokens:
        pooled, toks = model.encode_image_with_tokens(batch)
    else:
        pooled, toks = model.encode_image(batch), None
    n = images.shape[0]
    emb_cln, emb_adv = pooled[:n], (pooled[n:] if adv is not None else None)
    if toks is None:
        return emb_cln, emb_adv, None, None
    return emb_cln, emb_adv, toks[:n], (toks[n:] if adv is not None else None)


def imagenet_view(model: PixelCLIP) -> PixelCLIP:
    """The same CLIP (shared weights) normalising with ImageNet constants, as PMG-AFT's code does (docs/methods.md §0.2)."""
    pre = model.record.preprocess.model_copy(update={"mean": IMAGENET_MEAN, "std": IMAGENET_STD})
    return PixelCLIP(model.clip, model.record.model_copy(update={"preprocess": pre})).to(model.mean.device)
