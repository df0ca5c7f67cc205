"""Compact tokenizer: end-of-text is the highest id in every row, unknown words map to UNK, truncation keeps EOT."""

from __future__ import annotations

import numpy as np

from clipshield.service.tokenizer import UNK_ID, ClipBpeTokenizer, CompactTokenizer, build_compact_vocab


def test_compact_tokenizer_keeps_argmax_pooling_valid():
    vocab = build_compact_vocab(["a photo of a red star .", "a blue circle"])
    tok = CompactTokenizer(vocab, context_length=12)
    ids = tok(["a photo of a red star .", "a blue circle", ""])
    assert ids.shape == (3, 12)
    for row in ids:
        assert int(row.argmax()) == int(np.flatnonzero(row == tok.eot_id)[0])
    assert int(ids.max()) == tok.vocab_size - 1


def test_unknown_words_map_to_unk_and_long_text_is_truncated():
    vocab = build_compact_vocab(["a red star"])
    tok = CompactTokenizer(vocab, context_length=6)
    ids = tok(["a zebra star", "a red star a red star a red star"])
    assert UNK_ID in ids[0].tolist()
    assert ids[1, -1] == tok.eot_id and (ids[1] == tok.sot_id).sum() == 1


# Cleaning (ftfy mojibake, HTML entities, whitespace, case), unicode letters and digits, contractions,
# punctuation runs, emoji (byte-level pieces), the special tokens, empty text and truncation.
PARITY_TEXTS = [
    "This is a photo of a goldfish",
    "a photo of a .",
    "",
    "   ",
    "A PHOTO of   the\tDog's  toy, isn't it?!",
    "caf\u00e9 na\u00efve \u00c5ngstr\u00f6m",
    "Ã©tÃ© &amp;amp; &lt;b&gt; &quot;quoted&quot;",
    "3.14159 and 42nd street",
    "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8 \u0440\u0443\u0441\u0441\u043a\u0438\u0439 \u0627\u0644\u0639\u0631\u0628\u064a\u0629",
    "\U0001f431\U0001f3fd emoji \u2764\ufe0f",
    "<start_of_text>inside<end_of_text>",
    "x" * 300,
    " ".join(["word"] * 120),
    "co-operative re-entry -- ... !!!",
]


def test_clip_tokenizer_matches_open_clip():
    """Our torch-free BPE (`clipshield.service.bpe`) gives open_clip's ids, including truncation to 77."""
    import open_clip

    ours = ClipBpeTokenizer(77)(PARITY_TEXTS)
    assert ours.dtype == np.int64
    np.testing.assert_array_equal(ours, open_clip.tokenize(PARITY_TEXTS).numpy())
    assert ours[-2, -1] == ours[0].max()  # 120 words: the truncation branch really ran (end token last)


def test_compact_ids_come_from_open_clip_bpe_ids():
    """`encode` matches open_clip's `SimpleTokenizer.encode`, the ids `build_compact_vocab` remaps."""
    from open_clip.tokenizer import SimpleTokenizer

    reference = SimpleTokenizer()
    bpe = ClipBpeTokenizer(77)._bpe
    for text in PARITY_TEXTS:
        assert bpe.encode(text) == reference.encode(text)
