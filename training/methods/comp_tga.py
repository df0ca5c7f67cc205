"""Comp-TGA: TGA-ZSR with the complementary map A_pos * (1 - A_neg) (TGA-ZSR TPAMI follow-up; docs/methods.md §4).

A_neg is queried with the negative prompt "This is not a photo of a <class>"; both maps are min-max
normalised and upsampled separately and fused after upsampling. Unlike the reference we do not reseed
the global RNG at every map call (docs/methods.md §4): the maps are deterministic anyway.
"""

from __future__ import annotations

import torch
from pydantic import Field

from clipshield.training.methods.adversary import PGD_ADVERSARY
from clipshield.training.methods.attention import fuse_complementary, grid_scores
from clipshield.training.methods.inputs import LossInputs, LossOutput, TextHeads
from clipshield.training.methods.registry import register_method
from clipshield.training.methods.tga_zsr import TGA_SPACE, AttentionMap, TGAParams, attention_guided_loss


class CompTGAParams(TGAParams):
    """Comp-TGA loss weights (reference Comp-TGA.py defaults: Alpha 0.10, Beta 0.07, distance l2)."""

    alpha: float = Field(default=0.10, ge=0)
    beta: float = Field(default=0.07, ge=0)


def comp_grids(tokens: torch.Tensor, labels: torch.Tensor, heads: TextHeads, params: TGAParams) -> torch.Tensor:
    """Positive and negative grids [B, 2, g, g], each min-max normalised on its own (docs/methods.md §4)."""
    if heads.negatives is None:
        raise ValueError("Comp-TGA needs negative prompt embeddings (TextHeads.negatives)")
    negatives = heads.negatives
    pos = grid_scores(tokens, heads.classes[labels], params.map_norm, params.minmax_eps)
    neg = grid_scores(tokens, negatives[labels], params.map_norm, params.minmax_eps)
    return torch.stack([pos, neg], dim=1)


COMP_MAP = AttentionMap(
    name="comp_grids",
    grids=comp_grids,
    compose=lambda grids, out_size: fuse_complementary(grids[:, 0], grids[:, 1], out_size),
    diagnostics=lambda grids: {"": grids[:, 0] * (1 - grids[:, 1]), "pos": grids[:, 0], "neg": grids[:, 1]},
)


@register_method(
    "comp-tga", params=CompTGAParams, adversary=PGD_ADVERSARY, needs_frozen=True, lr=1e-4, needs_negatives=True, search_space=TGA_SPACE
)
def comp_tga_loss(batch: LossInputs, params: CompTGAParams) -> LossOutput:
    """Comp-TGA: TGA-ZSR with complementary (positive x not-negative) attention maps.

    Comp-TGA loss terms (docs/methods.md §4). Contract as TGA-ZSR; `batch.heads.negatives` required.
    """
    batch.require_negatives("Comp-TGA")
    return attention_guided_loss(batch, params, COMP_MAP, "Comp-TGA")
