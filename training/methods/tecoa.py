"""TeCoA: text-guided contrastive adversarial training (Mao et al., ICLR 2023; docs/methods.md §1).

L = (1/B) sum_i CE(s * cos(f_theta(x_adv,i), T), y_i) over all training-class prompts T. The
reference runs it as TGA-ZSR with Alpha = Beta = 0, still computing unused maps; we skip them.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from service.config import StrictModel
from service.pixel_model import PixelCLIP

from .common import cosine_logits, require
from .frozen_reference import FrozenModel
from .registry import LossOutput, TextHeads, register_method


class TeCoAParams(StrictModel):
    """TeCoA has no loss hyper-parameters (lr 1e-5 is a recipe default)."""


@register_method(
    "tecoa", params=TeCoAParams, needs_frozen=False, attack="pgd", lr=1e-5, batch_size=128,
    description="TeCoA: cross-entropy over class prompts on adversarial images",
)
def tecoa_loss(
    target: PixelCLIP,
    frozen: Optional[FrozenModel],
    images: torch.Tensor,
    adv: Optional[torch.Tensor],
    labels: torch.Tensor,
    heads: TextHeads,
    params: TeCoAParams,
) -> LossOutput:
    """TeCoA loss. Tensor contract: adv float [B,3,H,W] in [0,1], labels int64 [B]."""
    adv = require(adv, "adversarial images", "TeCoA")
    logits = cosine_logits(target.encode_image(adv), heads.classes, target.logit_scale)
    ce = F.cross_entropy(logits, labels)
    return LossOutput(ce, {"ce": ce}, {"logits_adv": logits.detach()})
