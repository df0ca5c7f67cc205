"""TGA-Anchor: TGA-ZSR's attention terms plus a FARE-style embedding anchor (ours, not a paper's; docs/methods.md §8).

L = CE(s*cos(f_theta(x_adv), T), y) + alpha * L_AR + beta * L_AMC + gamma * L_anchor, with
L_AR, L_AMC exactly TGA-ZSR's (docs/methods.md §3.2) and
L_anchor = (1/B) sum_b ||f_theta(x_adv,b) - f_phi(x_b)||_2^2 / ||f_phi(x_b)||_2^2,
FARE's distance (docs/methods.md §6) from the target's adversarial embedding to the frozen model's
clean one, divided by the frozen embedding's squared norm so gamma does not depend on the model's
embedding scale. The anchor ties the whole embedding (not just its class direction and its
attention map) to the original model: FARE's and PMG-AFT's anchoring is what kept held-out-domain
accuracy in the mini-world experiments (docs/finetuning.md). The adversarial embedding is anchored,
as in FARE, because it bounds the clean one too (x is inside the eps-ball) while a clean anchor
would add no robustness. The training attack stays TGA-ZSR's PGD on the CE (cheap).

Defaults and ranges for tuning: gamma 1.0 (0.1-10, log scale); alpha 0.08 (0.01-0.3, log) and beta
0.05 (0.01-0.3, log) as TGA-ZSR; distance 'rms' (the resolution-free map distance, docs/methods.md §3.3).
"""

from __future__ import annotations

import torch
from pydantic import Field

from clipshield.training.methods.adversary import PGD_ADVERSARY
from clipshield.training.methods.fare import clean_embedding
from clipshield.training.methods.inputs import LossInputs, LossOutput
from clipshield.training.methods.registry import register_method
from clipshield.training.methods.search_space import Range
from clipshield.training.methods.tga_zsr import TGA_MAP, TGA_SPACE, TGAParams, attention_guided_terms


class TGAAnchorParams(TGAParams):
    """TGA-Anchor weights: TGA-ZSR's alpha, beta (and map options) plus gamma, the embedding anchor's weight."""

    gamma: float = Field(default=1.0, ge=0)


def relative_anchor(embeddings: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ||e_b - r_b||^2 / ||r_b||^2 for embeddings [B, E] and the frozen reference [B, E]."""
    return (((embeddings - reference) ** 2).sum(dim=1) / (reference**2).sum(dim=1).clamp_min(1e-12)).mean()


@register_method(
    "tga-anchor",
    params=TGAAnchorParams,
    adversary=PGD_ADVERSARY,
    needs_frozen=True,
    lr=1e-4,
    search_space={**TGA_SPACE, "gamma": Range(low=0.1, high=10.0)},
)
def tga_anchor_loss(batch: LossInputs, params: TGAAnchorParams) -> LossOutput:
    """TGA-Anchor (ours): TGA-ZSR's attention terms plus an anchor of the adversarial embedding to the frozen clean one.

    Loss terms of docs/methods.md §8; `batch.frozen` and `batch.adv` required, tensor contract in `LossInputs`.
    """
    out, emb_adv = attention_guided_terms(batch, params, TGA_MAP, "TGA-Anchor")
    reference = clean_embedding(batch.require_frozen("TGA-Anchor"), batch.images)
    anchor = relative_anchor(emb_adv, reference)
    out.total = out.total + params.gamma * anchor
    out.terms.update(anchor=anchor, anchor_weighted=params.gamma * anchor)
    out.outputs.update(embedding_adv_target=emb_adv.detach(), embedding_orig_clean=reference)
    return out
