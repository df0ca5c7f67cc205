"""CLIPure-Cos latent purification (Zhang et al., ICLR 2025; docs/methods.md §7).

The unit-norm image embedding is moved by `steps` normalised gradient steps towards higher cosine
with a blank anchor (the mean embedding of the prompt templates with an empty class name), then
classified zero-shot. The inner gradient is taken without `create_graph`, as in the reference, so
for an outer backward it is a constant direction.

Step-size semantics. `mode="per_sample"` (serving default) normalises each sample's step by its own
gradient norm: sample b rotates towards the anchor by arctan(step_size) radians' worth of tangent
move, independent of its batch mates, so a request's answer never depends on the batch it shares.
`mode="batch"` reproduces the released code, which divides by the Frobenius norm of the whole
batch's gradient (batch-coupled; kept only for parity with the goldens).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from clipshield.models.pixel_model import PixelCLIP
from clipshield.models.zero_shot import encode_prompts
from clipshield.service.config import StrictModel


class PurifyConfig(StrictModel):
    """Purification settings; the reference uses steps=10, step_size=30, mode='batch'."""

    steps: int = Field(default=10, ge=0, le=1000)
    step_size: float = Field(default=30.0, ge=0.0)
    mode: Literal["per_sample", "batch"] = "per_sample"


def blank_anchor(model: PixelCLIP, templates: Sequence[str]) -> torch.Tensor:
    """Anchor [E]: mean of unit-norm embeddings of `templates` formatted with an empty class name.

    Not renormalised (irrelevant for cosine), as in the reference.
    """
    prompts = [t.format("") for t in templates]
    return encode_prompts(model, prompts).mean(dim=0)


def purify_embeddings(embeddings: torch.Tensor, anchor: torch.Tensor, cfg: PurifyConfig) -> torch.Tensor:
    """Purified embeddings [B, E] (unit norm for unit-norm input); differentiable like the reference.

    Tensor contract: embeddings float32 [B, E] (normally unit-norm); anchor float32 [E].
    """
    e = embeddings
    a = anchor.detach()[None, :]
    for _ in range(cfg.steps):
        r = e.norm(dim=-1, keepdim=True)
        u = e / r
        with torch.enable_grad():
            leaf = e.detach().requires_grad_(True)
            loss = -F.cosine_similarity(leaf, a, dim=-1).sum()
            (g,) = torch.autograd.grad(loss, leaf)
        gu = r * g
        if cfg.mode == "per_sample":
            norm = gu.norm(dim=-1, keepdim=True)
        else:
            norm = gu.norm()
        move = -gu / norm.clamp_min(torch.finfo(gu.dtype).tiny)
        u = u + cfg.step_size * move
        u = u / u.norm(dim=-1, keepdim=True)
        e = r * u
    return e


class PurifiedClassifier(nn.Module):
    """Zero-shot classifier with CLIPure-Cos purification between encoder and head.

    Tensor contract: images float [B, 3, H, W] in [0, 1] -> logits [B, C].
    """

    # Buffers registered in __init__, typed here (nn.Module's __getattr__ would read them as Tensor | Module).
    head: torch.Tensor
    anchor: torch.Tensor

    def __init__(
        self, model: PixelCLIP, head: torch.Tensor, anchor: torch.Tensor, cfg: PurifyConfig, logit_scale: float | None = None
    ) -> None:
        super().__init__()
        self.model = model
        self.cfg = cfg
        self.register_buffer("head", head.detach().float(), persistent=False)
        self.register_buffer("anchor", anchor.detach().float(), persistent=False)
        self.scale = model.logit_scale if logit_scale is None else float(logit_scale)

    def logits_from_embeddings(self, embeddings: torch.Tensor) -> torch.Tensor:
        purified = purify_embeddings(F.normalize(embeddings, dim=-1), self.anchor, self.cfg)
        # Purified rows are unit-norm by construction: a plain scaled dot product, deliberately not
        # `cosine_logits` (renormalising adds gradient noise through the purification, and PGD's sign
        # steps then break the gradient masking that tests/unit/test_adaptive.py characterises).
        return self.scale * purified @ self.head.t()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits_from_embeddings(self.model.encode_image(images))
