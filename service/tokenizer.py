"""Text tokenizers: the standard CLIP BPE, and a compact remapping of it for tiny models.

The compact form keeps the shipped mini-world model small: its token embedding only has rows for
the few BPE tokens its world uses, instead of CLIP's 49,408.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Protocol

import torch

from .config import TokenizerConfig

PAD_ID = 0
UNK_ID = 1


class Tokenizer(Protocol):
    """Maps strings to a [N, context_length] int64 tensor of token ids."""

    context_length: int

    def __call__(self, texts: Sequence[str]) -> torch.Tensor: ...


@lru_cache(maxsize=4)
def _simple_tokenizer(context_length: int):
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=context_length)


class ClipBpeTokenizer:
    """open_clip's standard CLIP tokenizer (start token, BPE ids, end token, zero padding)."""

    def __init__(self, context_length: int = 77) -> None:
        self.context_length = context_length
        self._bpe = _simple_tokenizer(context_length)

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        return self._bpe(list(texts), context_length=self.context_length)


class CompactTokenizer:
    """CLIP BPE with ids remapped to a small vocabulary; unknown BPE tokens map to `UNK_ID`."""

    def __init__(self, bpe_ids: Sequence[int], context_length: int) -> None:
        self.context_length = context_length
        self._bpe = _simple_tokenizer(context_length)
        self._map = {int(b): i + 2 for i, b in enumerate(bpe_ids)}
        self.sot_id = len(bpe_ids) + 2
        self.eot_id = len(bpe_ids) + 3
        self.vocab_size = len(bpe_ids) + 4

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        out = torch.full((len(texts), self.context_length), PAD_ID, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [self._map.get(b, UNK_ID) for b in self._bpe.encode(text)]
            ids = [self.sot_id] + ids[: self.context_length - 2] + [self.eot_id]
            out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out


def build_compact_vocab(corpus: Iterable[str]) -> list[int]:
    """Sorted BPE ids used by `corpus`: the vocabulary of a `CompactTokenizer`."""
    bpe = _simple_tokenizer(77)
    used: set[int] = set()
    for text in corpus:
        used.update(bpe.encode(text))
    return sorted(used)


def create_tokenizer(cfg: TokenizerConfig) -> Tokenizer:
    """Tokenizer described by a model record's tokenizer config."""
    if cfg.kind == "compact":
        return CompactTokenizer(cfg.bpe_ids or [], cfg.context_length)
    return ClipBpeTokenizer(cfg.context_length)
