"""A CLIP model that takes [0, 1] pixels: resizing and normalisation happen inside its forward.

Attacks, purification, fine-tuning, ONNX export and serving all use this wrapper, so an epsilon is
always measured in pixel units and the same pixels give the same embeddings everywhere
(docs/methods.md §0.2).
"""

from __future__ import annotations

from typing import Protocol, cast

import torch
import torch.nn.functional as F
from torch import nn

from clipshield.service.config import ModelRecord
from clipshield.service.errors import ConfigError
from clipshield.service.tokenizer import Tokenizer, create_tokenizer


class TokenMapsUnsupported(ConfigError, ValueError):
    """The image tower cannot give per-patch tokens (needed for text-guided attention maps): a user's
    choice of model and method that do not fit, reported as one line by the CLI."""


class OpenClipParts(Protocol):
    """What this module reads from an open_clip `CLIP` (open_clip ships no type information)."""

    visual: nn.Module
    logit_scale: nn.Parameter

    def encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor: ...


class PixelCLIP(nn.Module):
    """open_clip CLIP over [0, 1] pixels.

    Tensor contract: images are float32 [B, 3, H, W] in [0, 1] on the model's device. Images that
    came through `clipshield.service.preprocess.to_pixels` are S x S (S = the record's `image_size`) and are
    only normalised. Other sizes (the `native` CIFAR/STL protocol, or a loader size override) are
    resized inside the forward by `prepare` (see there): a documented, differentiable step of the
    attacked function, recorded in the data set's protocol, never a second image preprocessing.
    """

    # Buffers registered in __init__, typed here (nn.Module's __getattr__ would read them as Tensor | Module).
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, clip: nn.Module, record: ModelRecord) -> None:
        super().__init__()
        self.clip = clip
        self.record = record
        pre = record.preprocess
        self.image_size = pre.image_size
        self.interpolation = pre.interpolation
        self.register_buffer("mean", torch.tensor(pre.mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(pre.std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.tokenizer: Tokenizer = create_tokenizer(record.tokenizer)

    @property
    def parts(self) -> OpenClipParts:
        """`clip` typed as what this module uses: the one place that names open_clip's attribute types
        (nn.Module's __getattr__ would read them as Tensor | Module)."""
        return cast(OpenClipParts, self.clip)

    @property
    def visual(self) -> nn.Module:
        """The image tower (open_clip's `CLIP.visual`): pixels normalised by `prepare` -> embeddings [B, E]."""
        return self.parts.visual

    @property
    def logit_scale_param(self) -> nn.Parameter:
        """The checkpoint's trainable log temperature (open_clip's `CLIP.logit_scale`, a scalar parameter)."""
        return self.parts.logit_scale

    @property
    def logit_scale(self) -> float:
        """exp(logit_scale) of the checkpoint (about 100 for OpenAI weights)."""
        return float(self.logit_scale_param.detach().exp())

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised encoder input [B, 3, S, S] from [0, 1] pixels [B, 3, H, W].

        S x S input (everything `to_pixels` produces under a record's preprocessing, and all served
        input) is only normalised: no resampling. Any other size is resized to S x S with
        `F.interpolate(mode=record interpolation, align_corners=False)`, the reference's in-model
        resize (docs/methods.md §0.2), so attacks on native-resolution images perturb native pixels. Serving
        never takes this branch: the exported graph is traced at S x S.
        """
        if images.shape[-2:] != (self.image_size, self.image_size):
            images = F.interpolate(images, size=(self.image_size, self.image_size), mode=self.interpolation, align_corners=False)
        return (images - self.mean) / self.std

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Image embeddings [B, E] (projected class token); unit-norm when `normalize`."""
        feats: torch.Tensor = self.visual(self.prepare(images))
        return F.normalize(feats, dim=-1) if normalize else feats

    def encode_image_with_tokens(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Embedding [B, E] and all tokens after `ln_post` times `proj` [B, 1+P, E] in one forward.

        Token 0 is the class token (equal to the embedding); tokens 1.. are the patches in
        row-major order. This is the feature map the text-guided attention of TGA-ZSR reads
        (docs/methods.md §3.1 step 1 and §10).
        """
        visual = self.visual
        ln_post, proj = _token_parts(visual)
        captured: list[torch.Tensor] = []
        handle = ln_post.register_forward_hook(lambda _m, _i, out: captured.append(out))
        try:
            pooled: torch.Tensor = visual(self.prepare(images))
        finally:
            handle.remove()
        tokens = captured[0] @ proj
        return pooled, tokens

    def encode_text(self, token_ids: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Text embeddings [N, E] for token ids [N, context_length]."""
        feats = self.parts.encode_text(token_ids)
        return F.normalize(feats, dim=-1) if normalize else feats

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """Token ids for `texts` on the model's device."""
        return torch.from_numpy(self.tokenizer(texts)).to(self.mean.device)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Unit-norm image embeddings: the function exported to ONNX and served."""
        return self.encode_image(images, normalize=True)


def _token_parts(visual: nn.Module) -> tuple[nn.Module, torch.Tensor]:
    """The image tower's `ln_post` module and `proj` matrix [W, E], checked to give per-patch tokens."""
    ln_post, proj = getattr(visual, "ln_post", None), getattr(visual, "proj", None)
    if not isinstance(ln_post, nn.Module) or not isinstance(proj, torch.Tensor):
        raise TokenMapsUnsupported("text-guided attention maps need a ViT image tower with ln_post and proj")
    if getattr(visual, "attn_pool", None) is not None or getattr(visual, "final_ln_after_pool", False):
        raise TokenMapsUnsupported("text-guided attention maps need class-token pooling (no attentional pooling)")
    if getattr(visual, "pool_type", "tok") != "tok":
        raise TokenMapsUnsupported(f"text-guided attention maps need pool_type 'tok', not {visual.pool_type!r}")
    return ln_post, proj
