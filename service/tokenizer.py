"""Text tokenizers: the standard CLIP BPE, and a compact remapping of it for tiny models.

The compact form keeps the shipped mini-world model small: its token embedding only has rows for
the few BPE tokens its world uses, instead of CLIP's 49,408. Token ids are numpy int64 arrays
(torch callers wrap them with `torch.from_numpy`), and the BPE (`clipshield.service.bpe`) reads a vocabulary
file: a server passes its bundle's copy, training the one open_clip installs. No torch here: this
module is on the serving path.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Optional, Protocol

import numpy as np

from clipshield.service.bpe import ClipBpe, load_bpe
from clipshield.service.config import TokenizerConfig
from clipshield.service.errors import BadInput, ModelLoadError

PAD_ID = 0
UNK_ID = 1
OPEN_CLIP_VOCAB = "bpe_simple_vocab_16e6.txt.gz"  # the file `open_clip.tokenizer.default_bpe()` names


class Tokenizer(Protocol):
    """Maps strings to a [N, context_length] int64 array of token ids."""

    context_length: int

    def __call__(self, texts: Sequence[str]) -> np.ndarray: ...

    def unknown_words(self, texts: Sequence[str]) -> list[str]: ...

    def known_words(self) -> list[str]: ...


def open_clip_vocab() -> Path:
    """The BPE vocabulary file open_clip installs (training and export; a server reads its bundle's copy).

    Located without importing open_clip (which imports torch): servers import this module.
    """
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError("the open_clip BPE vocabulary needs open_clip installed (the train extra); a served bundle carries its own")
    return Path(next(iter(spec.submodule_search_locations))) / OPEN_CLIP_VOCAB


def _bpe(vocab: Optional[Path]) -> ClipBpe:
    return load_bpe(Path(vocab) if vocab is not None else open_clip_vocab())


class ClipBpeTokenizer:
    """The standard CLIP tokenizer (start token, BPE ids, end token, zero padding): open_clip's ids."""

    def __init__(self, context_length: int = 77, vocab: Optional[Path] = None) -> None:
        self.context_length = context_length
        self._bpe = _bpe(vocab)

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        return self._bpe(list(texts), self.context_length)

    def unknown_words(self, texts: Sequence[str]) -> list[str]:
        """Always empty: byte-level BPE over the full vocabulary represents any text."""
        return []

    def known_words(self) -> list[str]:
        """Empty: the vocabulary is open (any word), so there is nothing to list."""
        return []


class CompactTokenizer:
    """CLIP BPE with ids remapped to a small vocabulary; unknown BPE tokens map to `UNK_ID`."""

    def __init__(self, bpe_ids: Sequence[int], context_length: int, vocab: Optional[Path] = None) -> None:
        self.context_length = context_length
        self._bpe = _bpe(vocab)
        self._map = {int(b): i + 2 for i, b in enumerate(bpe_ids)}
        self.sot_id = len(bpe_ids) + 2
        self.eot_id = len(bpe_ids) + 3
        self.vocab_size = len(bpe_ids) + 4

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        out = np.full((len(texts), self.context_length), PAD_ID, dtype=np.int64)
        for row, text in enumerate(texts):
            ids = [self._map.get(b, UNK_ID) for b in self._bpe.encode(text)]
            ids = [self.sot_id] + ids[: self.context_length - 2] + [self.eot_id]
            out[row, : len(ids)] = ids
        return out

    def _word_ids(self, word: str) -> list[int]:
        """BPE ids of one pre-tokenised word, as `SimpleTokenizer.encode` computes them."""
        chars = "".join(self._bpe.byte_encoder[b] for b in word.encode("utf-8"))
        return [self._bpe.encoder[piece] for piece in self._bpe.bpe(chars).split(" ")]

    def unknown_words(self, texts: Sequence[str]) -> list[str]:
        """Words of `texts` (after CLIP's cleaning and lower-casing) with a BPE piece outside the vocabulary.

        Such words would become `UNK_ID`, which the model never saw in training: unique, in order.
        """
        unknown: dict[str, None] = {}
        for text in texts:
            for word in self._bpe.pat.findall(self._bpe.clean_fn(text)):
                if any(i not in self._map for i in self._word_ids(word)):
                    unknown[word] = None
        return list(unknown)

    def known_words(self) -> list[str]:
        """The vocabulary in readable form, sorted: whole-word pieces as words, word-start pieces with a
        trailing '-' (e.g. 'cy-' in 'cyan'), exactly what the model can read."""
        words = []
        for b in self._map:
            piece = self._bpe.decoder[b]
            whole = piece.endswith("</w>")
            text = bytes(self._bpe.byte_decoder[c] for c in (piece[: -len("</w>")] if whole else piece)).decode("utf-8", "replace")
            words.append(text if whole else text + "-")
        return sorted(words)


def build_compact_vocab(corpus: Iterable[str], vocab: Optional[Path] = None) -> list[int]:
    """Sorted BPE ids used by `corpus`: the vocabulary of a `CompactTokenizer`."""
    bpe = _bpe(vocab)
    used: set[int] = set()
    for text in corpus:
        used.update(bpe.encode(text))
    return sorted(used)


def check_known_words(tokenizer: Tokenizer, labels: Sequence[str]) -> None:
    """`BadInput` naming the words of `labels` the tokenizer cannot represent, and the words it can.

    Only a compact vocabulary (the mini-world model's) has such words; their tokens would all become
    one unknown id, so labels made of them would get confident but meaningless scores.
    """
    unknown = tokenizer.unknown_words(labels)
    if not unknown:
        return
    offending = [label for label in labels if tokenizer.unknown_words([label])]
    raise BadInput(
        f"the model's vocabulary has no word(s) {', '.join(repr(w) for w in unknown[:10])} "
        f"(in label(s) {', '.join(repr(label) for label in offending[:5])}); it knows only: "
        f"{' '.join(tokenizer.known_words())} ('-' marks a word start; docs/serving.md lists the words)"
    )


def create_tokenizer(cfg: TokenizerConfig, vocab: Optional[Path] = None) -> Tokenizer:
    """Tokenizer described by a model record's tokenizer config, over the BPE vocabulary file `vocab`
    (None: open_clip's installed copy, which needs open_clip)."""
    if cfg.kind == "compact":
        return CompactTokenizer(cfg.bpe_ids or [], cfg.context_length, vocab)
    return ClipBpeTokenizer(cfg.context_length, vocab)
