"""TeCoA: text-guided contrastive adversarial training (Mao et al., ICLR 2023; docs/methods.md §1).

L = (1/B) sum_i CE(s * cos(f_theta(x_adv,i), T), y_i) over all training-class prompts T. The
reference runs it as TGA-ZSR with Alpha = Beta = 0, still computing unused maps; we skip them.
"""

from __future__ import annotations

import torch.nn.functional as F

from clipshield.service.config import StrictModel
from clipshield.training.methods.adversary import PGD_ADVERSARY
from clipshield.training.methods.common import cosine_logits
from clipshield.training.methods.inputs import LossInputs, LossOutput
from clipshield.training.methods.registry import register_method


class TeCoAParams(StrictModel):
    """TeCoA has no loss hyper-parameters (lr 1e-5 is a recipe default)."""


@register_method("tecoa", params=TeCoAParams, adversary=PGD_ADVERSARY, lr=1e-5)
def tecoa_loss(batch: LossInputs, params: TeCoAParams) -> LossOutput:
    """TeCoA: cross-entropy over class prompts on adversarial images.

    TeCoA loss on `batch.adv` (required); tensor contract in `LossInputs`.
    """
    target = batch.target
    logits = cosine_logits(target.encode_image(batch.require_adv("TeCoA")), batch.heads.classes, target.logit_scale)
    ce = F.cross_entropy(logits, batch.labels)
    return LossOutput(ce, {"ce": ce}, {"logits_adv": logits.detach()})
