"""FT-Clean and FT-Adv ("FT-Standard"): fine-tuning with CLIP's batch-contrastive loss (TGA repo FT.py; docs/methods.md §2).

M_ij = s * cos(f_theta(x_i), t_{y_j}) over the batch's own class prompts; L = (CE(M, I) + CE(M^T, I)) / 2.
Repeated labels give identical columns (PITFALL 5): kept as in the reference. FT-Clean uses clean
images, FT-Adv the PGD images of docs/methods.md §0.6.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from service.config import StrictModel
from service.pixel_model import PixelCLIP

from .common import cosine_logits
from .frozen_reference import FrozenModel
from .registry import LossOutput, TextHeads, register_method


class FTParams(StrictModel):
    """FT-* have no loss hyper-parameters."""


def batch_contrastive_loss(
    target: PixelCLIP, images: torch.Tensor, labels: torch.Tensor, heads: TextHeads
) -> LossOutput:
    """Symmetric CE over the B x B matrix of image i vs the prompt of sample j's class."""
    logits_all = cosine_logits(target.encode_image(images), heads.classes, target.logit_scale)
    matrix = logits_all[:, labels]
    ids = torch.arange(len(labels), device=labels.device)
    loss = 0.5 * (F.cross_entropy(matrix, ids) + F.cross_entropy(matrix.t(), ids))
    return LossOutput(loss, {"contrastive": loss}, {"logits_per_image": logits_all.detach()})


@register_method(
    "ft-clean", params=FTParams, needs_frozen=False, attack="none", lr=1e-4, batch_size=128,
    description="FT-Clean: batch-contrastive fine-tuning on clean images",
)
def ft_clean_loss(
    target: PixelCLIP, frozen: Optional[FrozenModel], images: torch.Tensor, adv: Optional[torch.Tensor],
    labels: torch.Tensor, heads: TextHeads, params: FTParams,
) -> LossOutput:
    """FT-Clean loss on the clean images (`adv` ignored)."""
    return batch_contrastive_loss(target, images, labels, heads)


@register_method(
    "ft-adv", params=FTParams, needs_frozen=False, attack="pgd", lr=1e-4, batch_size=128,
    description="FT-Adv (FT-Standard): batch-contrastive fine-tuning on PGD images",
)
def ft_adv_loss(
    target: PixelCLIP, frozen: Optional[FrozenModel], images: torch.Tensor, adv: Optional[torch.Tensor],
    labels: torch.Tensor, heads: TextHeads, params: FTParams,
) -> LossOutput:
    """FT-Adv loss on the adversarial images."""
    if adv is None:
        raise ValueError("FT-Adv needs adversarial images")
    return batch_contrastive_loss(target, adv, labels, heads)
