"""Compact tokenizer: end-of-text is the highest id in every row, unknown words map to UNK, truncation keeps EOT."""
from __future__ import annotations

import torch

from service.tokenizer import UNK_ID, ClipBpeTokenizer, CompactTokenizer, build_compact_vocab


def test_compact_tokenizer_keeps_argmax_pooling_valid():
    vocab = build_compact_vocab(["a photo of a red star .", "a blue circle"])
    tok = CompactTokenizer(vocab, context_length=12)
    ids = tok(["a photo of a red star .", "a blue circle", ""])
    assert ids.shape == (3, 12)
    for row in ids:
        assert int(row.argmax()) == int((row == tok.eot_id).nonzero()[0])
    assert int(ids.max()) == tok.vocab_size - 1


def test_unknown_words_map_to_unk_and_long_text_is_truncated():
    vocab = build_compact_vocab(["a red star"])
    tok = CompactTokenizer(vocab, context_length=6)
    ids = tok(["a zebra star", "a red star a red star a red star"])
    assert UNK_ID in ids[0].tolist()
    assert ids[1, -1] == tok.eot_id and (ids[1] == tok.sot_id).sum() == 1


def test_clip_tokenizer_matches_open_clip():
    import open_clip

    texts = ["This is a photo of a goldfish", "a photo of a ."]
    assert torch.equal(ClipBpeTokenizer(77)(texts), open_clip.tokenize(texts))
