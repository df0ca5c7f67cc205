"""Zero-shot head: class text embeddings from prompt templates, and the zero-shot classifier.

One code path for evaluation, fine-tuning, attacks and serving: `build_text_head` encodes
`template.format(classname)` for every template, normalises each embedding, averages over
templates and renormalises (the CLIP prompt ensemble). Heads are cached by content hash, so a label
set is encoded once per model, not once per batch.
"""
from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .pixel_model import PixelCLIP
from .tokenizer import check_known_words


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
def build_text_head(
    model: PixelCLIP, classnames: Sequence[str], templates: Sequence[str], batch_size: int = 256
) -> torch.Tensor:
    """Class embeddings [C, E], unit-norm: mean over templates of unit-norm prompt embeddings.

    BadInput when a class name has words the model's (compact) vocabulary cannot represent.
    """
    if not classnames:
        raise ValueError("a zero-shot head needs at least one class name")
    if not templates:
        raise ValueError("a zero-shot head needs at least one prompt template")
    check_known_words(model.tokenizer, classnames)
    prompts = [t.format(c) for c in classnames for t in templates]
    emb = encode_prompts(model, prompts, batch_size).view(len(classnames), len(templates), -1)
    return F.normalize(emb.mean(dim=1), dim=-1)


def head_key(model_id: str, classnames: Sequence[str], templates: Sequence[str]) -> str:
    """Content hash of (model, labels, templates): the cache key of a text head."""
    blob = json.dumps([model_id, list(classnames), list(templates)], ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class TextHeadCache:
    """Thread-safe LRU cache of text heads keyed by `head_key`."""

    def __init__(self, capacity: int = 64) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get_or_build(
        self, model: PixelCLIP, model_id: str, classnames: Sequence[str], templates: Sequence[str]
    ) -> torch.Tensor:
        key = head_key(model_id, classnames, templates)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                self.hits += 1
                return self._items[key]
        head = build_text_head(model, classnames, templates)
        with self._lock:
            self.misses += 1
            self._items[key] = head
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return head


class ZeroShotClassifier(nn.Module):
    """Differentiable zero-shot classifier over [0, 1] pixels: logits = s * cos(image, class).

    `logit_scale` defaults to the model's exp(logit_scale); pass 1.0 for PMG-AFT's raw-cosine
    logits (docs/methods.md §5.1). Tensor contract: images float [B, 3, H, W] in [0, 1]; logits [B, C].
    """

    def __init__(self, model: PixelCLIP, head: torch.Tensor, logit_scale: Optional[float] = None) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("head", head.detach().float(), persistent=False)
        self.scale = model.logit_scale if logit_scale is None else float(logit_scale)

    def logits_from_embeddings(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Scaled cosine logits for (not necessarily unit-norm) image embeddings [B, E]."""
        return self.scale * F.normalize(embeddings, dim=-1) @ self.head.t()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits_from_embeddings(self.model.encode_image(images))
