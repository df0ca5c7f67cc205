"""TGA-ZSR: text-guided attention for zero-shot robustness (Yu et al., NeurIPS 2024; docs/methods.md §3).

L = CE(s*cos(f_theta(x_adv), T), y) + alpha * L_AR + beta * L_AMC with
L_AR = d(A_theta(x_adv), A_phi(x)) and L_AMC = d(A_theta(x), A_phi(x)), A the text-guided attention
map queried with the ground-truth class embedding (docs/methods.md §3.1), d the unsquared L2 distance by
default. Unlike the reference, the target model runs once over [clean; adversarial], the
adversarial forward is shared between the CE and the map, and the frozen model's clean map is
computed once per training image rather than every epoch (docs/methods.md §3.2).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from pydantic import Field

from clipshield.service.config import StrictModel
from clipshield.training.methods.adversary import PGD_ADVERSARY
from clipshield.training.methods.attention import Distance, TokenNorm, grid_scores, map_distance, upsample
from clipshield.training.methods.common import cosine_logits, paired_tokens
from clipshield.training.methods.inputs import LossInputs, LossOutput, TextHeads
from clipshield.training.methods.registry import register_method
from clipshield.training.methods.search_space import Dimension, Range


class TGAParams(StrictModel):
    """TGA-ZSR loss weights (reference TGA-ZSR.py defaults: Alpha 0.08, Beta 0.05, distance l2), the
    token normalisation of the map ('token_axis' = reference, 'per_token' = opt-in fix, docs/methods.md §3.1)
    and the min-max epsilon (0 = reference; > 0 bounds the map's gradient on flat score maps, §3.3)."""

    alpha: float = Field(default=0.08, ge=0)
    beta: float = Field(default=0.05, ge=0)
    distance: Distance = "l2"
    map_norm: TokenNorm = "token_axis"
    minmax_eps: float = Field(default=0.0, ge=0)


@dataclass(frozen=True)
class AttentionMap:
    """How a TGA-family method builds its attention map, in two stages.

    `grids(tokens [B,1+P,E], labels, heads, params)` -> min-max normalised patch grids [B, k, g, g]
    (the model-dependent part; small, so the frozen model's are remembered across epochs);
    `compose(grids, out_size)` -> flat map [B, out_size**2]; `diagnostics(grids)` -> named g x g grids
    for the outputs (goldens' `map7_*`).
    """

    name: str
    grids: Callable[[torch.Tensor, torch.Tensor, TextHeads, TGAParams], torch.Tensor]
    compose: Callable[[torch.Tensor, int], torch.Tensor]
    diagnostics: Callable[[torch.Tensor], dict[str, torch.Tensor]]


TGA_MAP = AttentionMap(
    name="tga_grids",
    grids=lambda tokens, labels, heads, params: grid_scores(tokens, heads.classes[labels], params.map_norm, params.minmax_eps)[:, None],
    compose=lambda grids, out_size: upsample(grids[:, 0], out_size),
    diagnostics=lambda grids: {"": grids[:, 0]},
)


def attention_guided_loss(batch: LossInputs, params: TGAParams, attention: AttentionMap, method: str) -> LossOutput:
    """The TGA-ZSR / Comp-TGA loss body for a given attention map (docs/methods.md §3.2, 4).

    The frozen model's clean grids come from `batch.frozen` (remembered per image across epochs in
    training); the target runs once over [clean; adversarial], sharing the adversarial forward
    between the CE and the map.
    """
    return attention_guided_terms(batch, params, attention, method)[0]


def attention_guided_terms(batch: LossInputs, params: TGAParams, attention: AttentionMap, method: str) -> tuple[LossOutput, torch.Tensor]:
    """`attention_guided_loss` plus the target's adversarial embeddings [B, E] (with gradient), for
    methods that add embedding-level terms to the same forward (tga-anchor)."""
    frozen = batch.require_frozen(method)
    adv = batch.require_adv(method)
    target, images, labels, heads = batch.target, batch.images, batch.labels, batch.heads
    size = target.image_size
    _, emb_adv, tok_cln, tok_adv = paired_tokens(target, images, adv)
    grids_ori = frozen.clean(
        attention.name,
        images,
        lambda model, rows: attention.grids(model.encode_image_with_tokens(images[rows])[1], labels[rows], heads, params),
    )
    logits = cosine_logits(emb_adv, heads.classes, target.logit_scale)
    ce = F.cross_entropy(logits, labels)
    grids = {
        "adv_target": attention.grids(tok_adv, labels, heads, params),
        "clean_target": attention.grids(tok_cln, labels, heads, params),
        "clean_frozen": grids_ori,
    }
    map_adv, map_cln, map_ori = (attention.compose(grids[k], size) for k in ("adv_target", "clean_target", "clean_frozen"))
    ar = map_distance(map_adv, map_ori, params.distance)
    amc = map_distance(map_cln, map_ori, params.distance)
    total = ce + params.alpha * ar + params.beta * amc
    outputs = {"logits_adv": logits, "map_adv_target": map_adv, "map_clean_target": map_cln, "map_clean_frozen": map_ori}
    for suffix, grid in grids.items():
        for kind, named in attention.diagnostics(grid).items():
            outputs[f"map7_{kind + '_' if kind else ''}{suffix}"] = named
    terms = {"ce": ce, "ar": ar, "amc": amc, "ar_weighted": params.alpha * ar, "amc_weighted": params.beta * amc}
    return LossOutput(total, terms, {k: v.detach() for k, v in outputs.items()}), emb_adv


# what tuning varies besides the lr: the two weights, on the reference's l2 distance only (under 'rms' the same
# weights mean sqrt(pixels) times less, so one range cannot serve both, docs/methods.md §3.3); [0.005, 0.3]
# holds the reference (0.08/0.05) and the 224-px stable point (0.0114/0.0071)
TGA_SPACE: dict[str, Dimension] = {
    "alpha": Range(low=0.005, high=0.3),
    "beta": Range(low=0.005, high=0.3),
}


@register_method("tga-zsr", params=TGAParams, adversary=PGD_ADVERSARY, needs_frozen=True, lr=1e-4, search_space=TGA_SPACE)
def tga_zsr_loss(batch: LossInputs, params: TGAParams) -> LossOutput:
    """TGA-ZSR: adversarial CE + text-guided attention refinement and model constraint.

    TGA-ZSR loss terms (docs/methods.md §3.2); `batch.frozen` and `batch.adv` required, tensor contract in `LossInputs`.
    """
    return attention_guided_loss(batch, params, TGA_MAP, "TGA-ZSR")
