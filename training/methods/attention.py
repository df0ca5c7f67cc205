"""Text-guided attention maps of TGA-ZSR (docs/methods.md §3.1) and Comp-TGA's complementary map (§4).

Tensor contract: tokens float [B, 1+P, E] (class token first, all tokens after ln_post @ proj, from
`PixelCLIP.encode_image_with_tokens`), text float [B, E] (one query per image); P must be a square
grid. Maps are [B, out_size*out_size], values in [0, 1], differentiable w.r.t. the tokens.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

Distance = Literal["l2", "rms", "cos", "l1"]
TokenNorm = Literal["token_axis", "per_token"]


def patch_scores(tokens: torch.Tensor, text: torch.Tensor, norm: TokenNorm = "token_axis") -> torch.Tensor:
    """Raw patch scores [B, P] (before min-max): the text query dotted with the normalised patch tokens.

    Tokens are L2-normalised over the token axis (dim 1, class token included) per channel, as the
    reference does (docs/methods.md §3.1 step 2); `norm='per_token'` normalises each token instead
    (probably what the authors meant; changes the published numbers, so it is opt-in).
    """
    if math.isqrt(tokens.shape[1] - 1) ** 2 != tokens.shape[1] - 1:
        raise ValueError(f"attention maps need a square patch grid, got {tokens.shape[1] - 1} patch tokens")
    feats = tokens / tokens.norm(dim=1 if norm == "token_axis" else -1, keepdim=True)
    return (feats[:, 1:] * text[:, None, :]).sum(-1)


def grid_scores(tokens: torch.Tensor, text: torch.Tensor, norm: TokenNorm = "token_axis", eps: float = 0.0) -> torch.Tensor:
    """Min-max normalised patch scores [B, g, g] (the reference's 7x7 map before upsampling).

    `patch_scores` min-max normalised per image: (s - min) / (max - min + eps). The reference has no
    epsilon (eps 0), so the map's gradient grows as 1 / (max - min) when an image's scores are nearly
    flat (docs/methods.md §3.3); eps > 0 bounds it.
    """
    scores = patch_scores(tokens, text, norm)
    side = math.isqrt(scores.shape[1])
    low = scores.min(dim=1, keepdim=True).values
    high = scores.max(dim=1, keepdim=True).values
    return ((scores - low) / (high - low + eps)).view(-1, side, side)


def upsample(grid: torch.Tensor, out_size: int) -> torch.Tensor:
    """Bilinear upsampling (align_corners False, no antialias) of [B, g, g] to flat [B, out_size**2]."""
    up = F.interpolate(grid[:, None], size=(out_size, out_size), mode="bilinear", align_corners=False)
    return up.flatten(1)


def text_guided_map(
    tokens: torch.Tensor, text: torch.Tensor, out_size: int, norm: TokenNorm = "token_axis"
) -> tuple[torch.Tensor, torch.Tensor]:
    """TGA-ZSR map A(x, t): (upsampled flat map [B, out_size**2], grid [B, g, g])."""
    grid = grid_scores(tokens, text, norm)
    return upsample(grid, out_size), grid


def fuse_complementary(pos_grid: torch.Tensor, neg_grid: torch.Tensor, out_size: int) -> torch.Tensor:
    """Comp-TGA's fused map A_pos * (1 - A_neg) [B, out_size**2] from grids min-max normalised
    separately, fused after upsampling (docs/methods.md §4)."""
    return upsample(pos_grid, out_size) * (1 - upsample(neg_grid, out_size))


def complementary_map(
    tokens: torch.Tensor, pos_text: torch.Tensor, neg_text: torch.Tensor, out_size: int, norm: TokenNorm = "token_axis"
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Comp-TGA map A_pos * (1 - A_neg), fused after separate min-max and upsampling.

    Returns the flat map [B, out_size**2] and the grids {'pos', 'neg', 'fused'} (fused = product of
    the grids, for debugging only, as in the goldens).
    """
    pos_grid = grid_scores(tokens, pos_text, norm)
    neg_grid = grid_scores(tokens, neg_text, norm)
    return fuse_complementary(pos_grid, neg_grid, out_size), {"pos": pos_grid, "neg": neg_grid, "fused": pos_grid * (1 - neg_grid)}


def map_distance(a: torch.Tensor, b: torch.Tensor, distance: Distance = "l2") -> torch.Tensor:
    """Distance between flat maps [B, M]: l2 = mean_b ||a_b - b_b||_2 (not squared, not per pixel),
    cos = mean_b (1 - cos(a_b, b_b)), l1 = mean over all elements of |a - b| (the reference's options);
    rms = l2 / sqrt(M), the root-mean-square per-pixel difference (ours: independent of the map's
    resolution, docs/methods.md §3.3)."""
    if distance == "l2":
        return (a - b).norm(dim=1).mean()
    if distance == "rms":
        return (a - b).norm(dim=1).mean() / math.sqrt(a.shape[1])
    if distance == "cos":
        return (1 - F.cosine_similarity(a, b, dim=1)).mean()
    if distance == "l1":
        return (a - b).abs().mean()
    raise ValueError(f"unknown map distance {distance!r}; known: l2, rms, cos, l1")
