"""Zero-shot heads without torch: prompts, the prompt ensemble, cache keys and the LRU cache of heads.

One implementation of each for every runtime: the server builds heads for caller-supplied labels
from ONNX text embeddings (`clipshield.service.inference`), training and evaluation from the torch text tower
(`clipshield.models.zero_shot.build_text_head`, which hands its embeddings to `ensemble`), and both cache
them in a `HeadCache` under `head_key`. The scaled-cosine logits are written once per runtime:
`clipshield.service.purify_np.logits` (numpy, serving) and `clipshield.models.zero_shot.cosine_logits` (torch, with
gradients for attacks and fine-tuning); `tests/unit/test_zero_shot.py` checks they agree.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Generic, Optional, TypeVar

import numpy as np

from clipshield.service.purify_np import normalize

Head = TypeVar("Head")


def ensemble_prompts(classnames: Sequence[str], templates: Sequence[str]) -> list[str]:
    """`template.format(c)` for every class and template, class-major: the rows `ensemble` expects."""
    if not classnames:
        raise ValueError("a zero-shot head needs at least one class name")
    if not templates:
        raise ValueError("a zero-shot head needs at least one prompt template")
    return [t.format(c) for c in classnames for t in templates]


def ensemble(prompt_embeddings: np.ndarray, n_classes: int) -> np.ndarray:
    """The CLIP prompt ensemble: unit-norm class embeddings [C, E] float32.

    Tensor contract: `prompt_embeddings` float [C * T, E], rows in `ensemble_prompts` order; each
    row is normalised, averaged over its class's T templates, and the mean renormalised.
    """
    emb = normalize(np.asarray(prompt_embeddings, dtype=np.float32))
    return normalize(emb.reshape(n_classes, -1, emb.shape[-1]).mean(axis=1)).astype(np.float32)


def head_key(model_id: str, classnames: Sequence[str], templates: Sequence[str]) -> str:
    """Content hash of (model, labels, templates): the cache key of a zero-shot head."""
    blob = json.dumps([model_id, list(classnames), list(templates)], ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class HeadCache(Generic[Head]):
    """Thread-safe LRU of zero-shot heads (numpy arrays when serving, tensors in training) by `head_key`.

    `get_or_build` builds outside the lock, so a slow text encoding never blocks other readers; two
    threads missing the same key both build it and the second result wins (same content).
    """

    def __init__(self, capacity: int = 64) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, Head] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> Optional[Head]:
        with self._lock:
            head = self._items.get(key)
            if head is not None:
                self._items.move_to_end(key)
                self.hits += 1
            return head

    def put(self, key: str, head: Head) -> None:
        with self._lock:
            self.misses += 1
            self._items[key] = head
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def get_or_build(self, key: str, build: Callable[[], Head]) -> Head:
        """The cached head under `key`, or `build()` stored under it."""
        head = self.get(key)
        if head is None:
            head = build()
            self.put(key, head)
        return head

    def __len__(self) -> int:
        return len(self._items)
