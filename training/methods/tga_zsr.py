"""TGA-ZSR: text-guided attention for zero-shot robustness (Yu et al., NeurIPS 2024; spec section 3).

L = CE(s*cos(f_theta(x_adv), T), y) + alpha * L_AR + beta * L_AMC with
L_AR = d(A_theta(x_adv), A_phi(x)) and L_AMC = d(A_theta(x), A_phi(x)), A the text-guided attention
map queried with the ground-truth class embedding (section 3.1), d the unsquared L2 distance by
default. Unlike the reference, the target model runs once over [clean; adversarial] and the
adversarial forward is shared between the CE and the map (spec 3.2 compute note).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Optional

import torch
import torch.nn.functional as F
from pydantic import Field

from service.config import StrictModel
from service.pixel_model import PixelCLIP

from .attention import Distance, TokenNorm, map_distance, text_guided_map
from .common import cosine_logits, paired_forward, require
from .registry import LossOutput, TextHeads, register_method

# map_fn(tokens [B,1+P,E], labels [B], heads, out_size, params) -> (flat map [B, out_size**2], grids)
MapFn = Callable[[torch.Tensor, torch.Tensor, TextHeads, int, "TGAParams"], tuple[torch.Tensor, dict[str, torch.Tensor]]]


class TGAParams(StrictModel):
    """TGA-ZSR loss weights (reference TGA-ZSR.py defaults: Alpha 0.08, Beta 0.05, distance l2) and the
    token normalisation of the map ('token_axis' = reference, 'per_token' = opt-in fix, spec PITFALL 1)."""

    alpha: float = Field(default=0.08, ge=0)
    beta: float = Field(default=0.05, ge=0)
    distance: Distance = "l2"
    map_norm: TokenNorm = "token_axis"


def tga_map(
    tokens: torch.Tensor, labels: torch.Tensor, heads: TextHeads, out_size: int, params: TGAParams
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """TGA-ZSR map queried with each sample's ground-truth class embedding."""
    flat, grid = text_guided_map(tokens, heads.classes[labels], out_size, params.map_norm)
    return flat, {"": grid}


def attention_guided_loss(
    target: PixelCLIP,
    frozen: Optional[PixelCLIP],
    images: torch.Tensor,
    adv: Optional[torch.Tensor],
    labels: torch.Tensor,
    heads: TextHeads,
    params: TGAParams,
    map_fn: MapFn,
) -> LossOutput:
    """The TGA-ZSR / Comp-TGA loss body for a given attention-map function (spec 3.2, 4)."""
    frozen = require(frozen, "the frozen original model", "TGA-ZSR")
    adv = require(adv, "adversarial images", "TGA-ZSR")
    size = target.image_size
    _, emb_adv, tok_cln, tok_adv = paired_forward(target, images, adv, tokens=True)
    with torch.no_grad():
        _, tok_ori = frozen.encode_image_with_tokens(images)
    logits = cosine_logits(emb_adv, heads.classes, target.logit_scale)
    ce = F.cross_entropy(logits, labels)
    map_adv, grids_adv = map_fn(tok_adv, labels, heads, size, params)
    map_cln, grids_cln = map_fn(tok_cln, labels, heads, size, params)
    map_ori, grids_ori = map_fn(tok_ori, labels, heads, size, params)
    ar = map_distance(map_adv, map_ori, params.distance)
    amc = map_distance(map_cln, map_ori, params.distance)
    total = ce + params.alpha * ar + params.beta * amc
    outputs = {"logits_adv": logits, "map_adv_target": map_adv, "map_clean_target": map_cln, "map_clean_frozen": map_ori}
    for suffix, grids in (("adv_target", grids_adv), ("clean_target", grids_cln), ("clean_frozen", grids_ori)):
        for kind, grid in grids.items():
            outputs[f"map7_{kind + '_' if kind else ''}{suffix}"] = grid
    terms = {"ce": ce, "ar": ar, "amc": amc, "ar_weighted": params.alpha * ar, "amc_weighted": params.beta * amc}
    return LossOutput(total, terms, {k: v.detach() for k, v in outputs.items()})


@register_method(
    "tga-zsr", params=TGAParams, needs_frozen=True, attack="pgd", lr=1e-4, batch_size=128,
    description="TGA-ZSR: adversarial CE + text-guided attention refinement and model constraint",
)
def tga_zsr_loss(
    target: PixelCLIP,
    frozen: Optional[PixelCLIP],
    images: torch.Tensor,
    adv: Optional[torch.Tensor],
    labels: torch.Tensor,
    heads: TextHeads,
    params: TGAParams,
) -> LossOutput:
    """TGA-ZSR loss terms (spec 3.2). Tensor contract: images/adv float [B,3,H,W] in [0,1], labels int64 [B]."""
    return attention_guided_loss(target, frozen, images, adv, labels, heads, params, tga_map)
