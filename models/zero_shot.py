"""Zero-shot head on the torch text tower, the torch scaled-cosine logits, and the zero-shot classifier.

One code path for evaluation, fine-tuning, attacks and export: `build_text_head` encodes
`template.format(classname)` for every template and hands the embeddings to the prompt ensemble of
`clipshield.service.heads` (the one the server uses on ONNX embeddings: normalise, average over templates,
renormalise). Heads are cached by content hash (`clipshield.service.heads.head_key`), so a label set is
encoded once per model, not once per batch. `cosine_logits` is the torch scaled-cosine logit
(`clipshield.service.purify_np.logits` is the numpy one; `tests/unit/test_zero_shot.py` checks they agree).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from clipshield.models.pixel_model import PixelCLIP
from clipshield.service.heads import HeadCache, ensemble, ensemble_prompts, head_key
from clipshield.service.tokenizer import check_known_words


def cosine_logits(embeddings: torch.Tensor, head: torch.Tensor, scale: float) -> torch.Tensor:
    """`scale * cos(embedding, class)` logits [B, C] for embeddings [B, E] (any norm) and a unit-norm head [C, E].

    Differentiable: the logits of attacks, fine-tuning losses and evaluation.
    """
    return scale * F.normalize(embeddings, dim=-1) @ head.t()


def format_prompts(classnames: Sequence[str], template: str) -> list[str]:
    """`template.format(c)` for each class name, in class order."""
    return [template.format(c) for c in classnames]


@torch.no_grad()
def encode_prompts(model: PixelCLIP, prompts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
    """Unit-norm text embeddings [N, E] of `prompts`, encoded in batches."""
    out = []
    for i in range(0, len(prompts), batch_size):
        tokens = model.tokenize(list(prompts[i : i + batch_size]))
        out.append(model.encode_text(tokens, normalize=True).float())
    return torch.cat(out, 0)


@torch.no_grad()
def build_text_head(model: PixelCLIP, classnames: Sequence[str], templates: Sequence[str], batch_size: int = 256) -> torch.Tensor:
    """Class embeddings [C, E] float32, unit-norm, on the model's device: `clipshield.service.heads.ensemble` of the prompts.

    BadInput when a class name has words the model's (compact) vocabulary cannot represent.
    """
    prompts = ensemble_prompts(classnames, templates)
    check_known_words(model.tokenizer, classnames)
    emb = encode_prompts(model, prompts, batch_size)
    return torch.from_numpy(ensemble(emb.cpu().numpy(), len(classnames))).to(emb.device)


class TextHeadCache:
    """Thread-safe LRU of torch text heads keyed by `head_key` (a `clipshield.service.heads.HeadCache`)."""

    def __init__(self, capacity: int = 64) -> None:
        self._cache: HeadCache[torch.Tensor] = HeadCache(capacity)

    @property
    def hits(self) -> int:
        return self._cache.hits

    @property
    def misses(self) -> int:
        return self._cache.misses

    def get_or_build(self, model: PixelCLIP, model_id: str, classnames: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
        """The head of (model, labels, templates), built with `build_text_head` on a miss."""
        key = head_key(model_id, classnames, templates)
        return self._cache.get_or_build(key, lambda: build_text_head(model, classnames, templates))


class ZeroShotClassifier(nn.Module):
    """Differentiable zero-shot classifier over [0, 1] pixels: logits = s * cos(image, class).

    `logit_scale` defaults to the model's exp(logit_scale); pass 1.0 for PMG-AFT's raw-cosine
    logits (docs/methods.md §5.1). Tensor contract: images float [B, 3, H, W] in [0, 1]; logits [B, C].
    """

    # Buffers registered in __init__, typed here (nn.Module's __getattr__ would read them as Tensor | Module).
    head: torch.Tensor

    def __init__(self, model: PixelCLIP, head: torch.Tensor, logit_scale: Optional[float] = None) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("head", head.detach().float(), persistent=False)
        self.scale = model.logit_scale if logit_scale is None else float(logit_scale)

    def logits_from_embeddings(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Scaled cosine logits for (not necessarily unit-norm) image embeddings [B, E]."""
        return cosine_logits(embeddings, self.head, self.scale)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits_from_embeddings(self.model.encode_image(images))
