"""CLIP's byte-level BPE (OpenAI's `simple_tokenizer`), read from a vocabulary file, without torch.

The same algorithm, vocabulary layout, text cleaning (`ftfy` + HTML unescape + whitespace, lower
case) and pre-tokenising pattern as `open_clip.tokenizer.SimpleTokenizer(clean="lower")`, which
`tests/unit/test_tokenizer.py` checks id for id. Written here because the reference lives in
packages that import torch at import time (open_clip, CLIP) and serving must not need torch; the
Hugging Face `tokenizers` CLIP pipeline cleans text differently (no ftfy), so its ids can differ.
The vocabulary comes from the export bundle (`bpe_simple_vocab_16e6.txt.gz`), so a server
tokenizes with exactly the file the model was exported with.
"""

from __future__ import annotations

import gzip
import html
from functools import lru_cache
from pathlib import Path

import ftfy
import numpy as np
import regex

# CLIP's vocabulary: 48,894 merges after the header line; 256 bytes, 256 word-final bytes, merges, 2 specials.
N_MERGES = 49152 - 256 - 2
SPECIAL_TOKENS = ("<start_of_text>", "<end_of_text>")
# sha256 of CLIP's `bpe_simple_vocab_16e6.txt.gz` (as shipped by open_clip and OpenAI's CLIP): every
# clipshield model's text tower reads ids of this vocabulary.
CLIP_VOCAB_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible map from the 256 byte values to printable unicode characters."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def clean_lower(text: str) -> str:
    """CLIP's text cleaning: ftfy fix, double HTML unescape, collapsed whitespace, lower case."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return " ".join(text.split()).strip().lower()


def _pairs(word: tuple[str, ...]) -> set[tuple[str, str]]:
    return set(zip(word, word[1:]))


def _merge(word: tuple[str, ...], first: str, second: str) -> tuple[str, ...]:
    """`word` with every adjacent (first, second) replaced by their concatenation, left to right."""
    out: list[str] = []
    i = 0
    while i < len(word):
        if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
            out.append(first + second)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


class ClipBpe:
    """Byte-level BPE over a CLIP vocabulary file; `encode(text)` gives the BPE ids (no start/end tokens)."""

    def __init__(self, vocab_path: Path) -> None:
        with gzip.open(vocab_path) as fh:
            merges_text = fh.read().decode("utf-8").split("\n")[1 : N_MERGES + 1]
        merges = [tuple(m.split()) for m in merges_text]
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {v: k for k, v in self.byte_encoder.items()}
        vocab = list(self.byte_encoder.values())
        vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges] + list(SPECIAL_TOKENS)
        self.encoder = {piece: i for i, piece in enumerate(vocab)}
        self.decoder = {i: piece for piece, i in self.encoder.items()}
        self.bpe_ranks = {m: i for i, m in enumerate(merges)}
        self.sot_token_id, self.eot_token_id = (self.encoder[t] for t in SPECIAL_TOKENS)
        self.pat = regex.compile(
            "|".join(SPECIAL_TOKENS) + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""", regex.IGNORECASE
        )
        self.clean_fn = clean_lower
        self._cache: dict[str, str] = {t: t for t in SPECIAL_TOKENS}

    def bpe(self, token: str) -> str:
        """Space-separated BPE pieces of one byte-encoded word (the last piece ends in '</w>')."""
        if token in self._cache:
            return self._cache[token]
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        pairs = _pairs(word)
        while pairs:
            bigram = min(pairs, key=lambda pair: self.bpe_ranks.get(pair, float("inf")))
            if bigram not in self.bpe_ranks:
                break
            word = _merge(word, *bigram)
            pairs = _pairs(word) if len(word) > 1 else set()
        self._cache[token] = " ".join(word)
        return self._cache[token]

    def encode(self, text: str) -> list[int]:
        """BPE ids of `text` after CLIP's cleaning."""
        ids: list[int] = []
        for token in self.pat.findall(self.clean_fn(text)):
            chars = "".join(self.byte_encoder[b] for b in token.encode("utf-8"))
            ids.extend(self.encoder[piece] for piece in self.bpe(chars).split(" "))
        return ids

    def __call__(self, texts: list[str], context_length: int) -> np.ndarray:
        """int64 [N, context_length]: start token, BPE ids, end token, zero padding (over-long rows keep the end token)."""
        out = np.zeros((len(texts), context_length), dtype=np.int64)
        for row, text in enumerate(texts):
            ids = [self.sot_token_id] + self.encode(text) + [self.eot_token_id]
            if len(ids) > context_length:
                ids = ids[:context_length]
                ids[-1] = self.eot_token_id
            out[row, : len(ids)] = ids
        return out


@lru_cache(maxsize=4)
def load_bpe(vocab_path: Path) -> ClipBpe:
    """One `ClipBpe` per vocabulary file per process (building it parses ~49k merges)."""
    return ClipBpe(Path(vocab_path))
