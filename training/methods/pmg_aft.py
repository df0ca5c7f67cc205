"""PMG-AFT: pre-trained model guided adversarial fine-tuning (Wang et al., CVPR 2024; docs/methods.md §5).

L = CE(c_theta(x_adv), y) + KL(P_phi(x_adv) || P_theta(x_adv)) + KL(P_theta(x) || P_theta(x_adv)) with
c = raw cosine logits (no temperature) and, by default, ImageNet normalisation, as the reference
code does (PITFALL 4); KL terms are summed over batch and classes (reference) unless
`kl_reduction='batchmean'`. Gradients flow through both target distributions (no detach).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from clipshield.models.pixel_model import PixelCLIP
from clipshield.service.config import StrictModel
from clipshield.training.methods.adversary import ClassifierPGD
from clipshield.training.methods.common import cosine_logits, imagenet_view, paired_embeddings
from clipshield.training.methods.inputs import LossInputs, LossOutput
from clipshield.training.methods.registry import register_method
from clipshield.training.methods.search_space import Range


class PMGParams(StrictModel):
    """PMG-AFT options: normalisation ('imagenet' = reference, 'model' = the model's own constants),
    KL reduction ('sum' = reference, 'batchmean') and the weights of the two KL terms (1 in the code)."""

    normalization: Literal["imagenet", "model"] = "imagenet"
    kl_reduction: Literal["sum", "batchmean"] = "sum"
    general_weight: float = Field(default=1.0, ge=0)
    clean_weight: float = Field(default=1.0, ge=0)


def pmg_view(model: PixelCLIP, params: PMGParams) -> tuple[PixelCLIP, float]:
    """(model as PMG-AFT sees it, logit scale 1.0): the classifier its PGD and loss use."""
    return (imagenet_view(model) if params.normalization == "imagenet" else model), 1.0


# PMG-AFT attacks the classifier its loss uses (raw cosines, ImageNet normalisation by default)
PMG_ADVERSARY = ClassifierPGD(view=pmg_view)


def kl_divergence(ref_logits: torch.Tensor, logits: torch.Tensor, reduction: str) -> torch.Tensor:
    """KL(softmax(ref) || softmax(logits)) summed over classes; summed or averaged over the batch."""
    kl = F.kl_div(F.log_softmax(logits, -1), F.log_softmax(ref_logits, -1), reduction="sum", log_target=True)
    return kl if reduction == "sum" else kl / logits.shape[0]


@register_method(
    "pmg-aft",
    params=PMGParams,
    adversary=PMG_ADVERSARY,
    needs_frozen=True,
    lr=5e-5,
    batch_size=256,
    search_space={"general_weight": Range(low=0.1, high=3.0), "clean_weight": Range(low=0.1, high=3.0)},
)
def pmg_aft_loss(batch: LossInputs, params: PMGParams) -> LossOutput:
    """PMG-AFT: adversarial CE + KL to the frozen model's and the clean predictions.

    PMG-AFT loss terms (docs/methods.md §5.2); `batch.frozen` and `batch.adv` required, tensor contract in `LossInputs`.
    """
    frozen = batch.require_frozen("PMG-AFT")
    adv = batch.require_adv("PMG-AFT")
    heads, labels = batch.heads, batch.labels
    view, scale = pmg_view(batch.target, params)
    frozen_view, _ = pmg_view(frozen.model, params)
    emb_cln, emb_adv = paired_embeddings(view, batch.images, adv)
    logits_adv = cosine_logits(emb_adv, heads.classes, scale)
    logits_cln = cosine_logits(emb_cln, heads.classes, scale)
    with torch.no_grad():
        logits_frozen = cosine_logits(frozen_view.encode_image(adv), heads.classes, scale)
    ce = F.cross_entropy(logits_adv, labels)
    general = kl_divergence(logits_frozen, logits_adv, params.kl_reduction)
    clean = kl_divergence(logits_cln, logits_adv, params.kl_reduction)
    total = ce + params.general_weight * general + params.clean_weight * clean
    outputs = {
        "logits_adv_target": logits_adv,
        "logits_clean_target": logits_cln,
        "logits_adv_frozen": logits_frozen,
        "image_embed_adv_target": F.normalize(emb_adv, dim=-1),
    }
    return LossOutput(total, {"ce": ce, "kl_general": general, "kl_clean": clean}, {k: v.detach() for k, v in outputs.items()})
