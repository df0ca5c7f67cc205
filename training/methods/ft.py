"""FT-Clean and FT-Adv ("FT-Standard"): fine-tuning with CLIP's batch-contrastive loss (TGA repo FT.py; docs/methods.md §2).

M_ij = s * cos(f_theta(x_i), t_{y_j}) over the batch's own class prompts; L = (CE(M, I) + CE(M^T, I)) / 2.
Repeated labels give identical columns (PITFALL 5): kept as in the reference. FT-Clean uses clean
images, FT-Adv the PGD images of docs/methods.md §0.6.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from clipshield.models.pixel_model import PixelCLIP
from clipshield.service.config import StrictModel
from clipshield.training.methods.adversary import NO_ADVERSARY, PGD_ADVERSARY
from clipshield.training.methods.common import cosine_logits
from clipshield.training.methods.inputs import LossInputs, LossOutput, TextHeads
from clipshield.training.methods.registry import register_method


class FTParams(StrictModel):
    """FT-* have no loss hyper-parameters."""


def batch_contrastive_loss(target: PixelCLIP, images: torch.Tensor, labels: torch.Tensor, heads: TextHeads) -> LossOutput:
    """Symmetric CE over the B x B matrix of image i vs the prompt of sample j's class."""
    logits_all = cosine_logits(target.encode_image(images), heads.classes, target.logit_scale)
    matrix = logits_all[:, labels]
    ids = torch.arange(len(labels), device=labels.device)
    loss = 0.5 * (F.cross_entropy(matrix, ids) + F.cross_entropy(matrix.t(), ids))
    return LossOutput(loss, {"contrastive": loss}, {"logits_per_image": logits_all.detach()})


@register_method("ft-clean", params=FTParams, adversary=NO_ADVERSARY, lr=1e-4)
def ft_clean_loss(batch: LossInputs, params: FTParams) -> LossOutput:
    """FT-Clean: batch-contrastive fine-tuning on clean images.

    FT-Clean loss on the clean images (`batch.adv` ignored).
    """
    return batch_contrastive_loss(batch.target, batch.images, batch.labels, batch.heads)


@register_method("ft-adv", params=FTParams, adversary=PGD_ADVERSARY, lr=1e-4)
def ft_adv_loss(batch: LossInputs, params: FTParams) -> LossOutput:
    """FT-Adv (FT-Standard): batch-contrastive fine-tuning on PGD images.

    FT-Adv loss on the adversarial images.
    """
    return batch_contrastive_loss(batch.target, batch.require_adv("FT-Adv"), batch.labels, batch.heads)
