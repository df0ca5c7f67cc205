"""Comp-TGA: TGA-ZSR with the complementary map A_pos * (1 - A_neg) (TGA-ZSR TPAMI follow-up; spec section 4).

A_neg is queried with the negative prompt "This is not a photo of a <class>"; both maps are min-max
normalised and upsampled separately and fused after upsampling. Unlike the reference we do not reseed
the global RNG at every map call (spec 4, PITFALL 7): the maps are deterministic anyway.
"""
from __future__ import annotations

from typing import Optional

import torch
from pydantic import Field

from service.pixel_model import PixelCLIP

from .attention import complementary_map
from .common import require
from .registry import LossOutput, TextHeads, register_method
from .tga_zsr import TGAParams, attention_guided_loss


class CompTGAParams(TGAParams):
    """Comp-TGA loss weights (reference Comp-TGA.py defaults: Alpha 0.10, Beta 0.07, distance l2)."""

    alpha: float = Field(default=0.10, ge=0)
    beta: float = Field(default=0.07, ge=0)


def comp_map(
    tokens: torch.Tensor, labels: torch.Tensor, heads: TextHeads, out_size: int, params: TGAParams
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Complementary map for the ground-truth positive and negative prompts."""
    negatives = require(heads.negatives, "negative prompt embeddings (TextHeads.negatives)", "Comp-TGA")
    flat, grids = complementary_map(tokens, heads.classes[labels], negatives[labels], out_size, params.map_norm)
    return flat, {"": grids["fused"], "pos": grids["pos"], "neg": grids["neg"]}


@register_method(
    "comp-tga", params=CompTGAParams, needs_frozen=True, attack="pgd", lr=1e-4, batch_size=128, needs_negatives=True,
    description="Comp-TGA: TGA-ZSR with complementary (positive x not-negative) attention maps",
)
def comp_tga_loss(
    target: PixelCLIP,
    frozen: Optional[PixelCLIP],
    images: torch.Tensor,
    adv: Optional[torch.Tensor],
    labels: torch.Tensor,
    heads: TextHeads,
    params: CompTGAParams,
) -> LossOutput:
    """Comp-TGA loss terms (spec 4). Tensor contract as TGA-ZSR; `heads.negatives` required."""
    return attention_guided_loss(target, frozen, images, adv, labels, heads, params, comp_map)
