"""Captions of mini-world images, with the attributes each caption mentions.

A caption mentions a subset of (shape, colour, size, domain); the multi-positive contrastive loss
treats a caption as positive for every image in the batch that matches everything it mentions.
Captions of caption-held-out combinations never mention colour and shape together.
"""

from __future__ import annotations

import numpy as np

from clipshield.datasets.miniworld.world import COLORS, DOMAIN_WORDS, DOMAINS, SHAPES, SIZES, holdout_kind

# attribute slots in a caption's "mentions" vector; -1 = not mentioned
SHAPE, COLOR, SIZE, DOMAIN = range(4)
N_SLOTS = 4

GENERIC_BODIES = ("", "object", "shape", "thing")
PREFIXES = ("a photo of a", "a", "an image of a", "a picture of a")

# zero-shot prompt ensembles for the mini world's label sets, and the fine-tuning prompt
EVAL_TEMPLATES: dict[str, tuple[str, ...]] = {
    "shape": ("a photo of a {}.", "a {}.", "an image of a {}."),
    "color": ("a photo of a {} object.", "a {} shape.", "a {} thing."),
    "color_shape": ("a photo of a {}.", "a {}.", "an image of a {}."),
}
FINETUNE_TEMPLATE = "a photo of a {}"
BLANK_TEMPLATES = ("a photo of a .", "a .", "an image of a .")


def caption_for(shape: int, color: int, size: int, domain: int, rng: np.random.Generator) -> tuple[str, np.ndarray]:
    """Random caption of an image with these attributes, and its mentions vector [4] (int64)."""
    mentions = np.full(N_SLOTS, -1, dtype=np.int64)
    joint_ok = holdout_kind(shape, color) != "heldout_caption"
    r = rng.random()
    if r < 0.5 and joint_ok:
        kind = "full"
    elif r < 0.7 or (r < 0.5 and not joint_ok and rng.random() < 0.5):
        kind = "shape"
    elif r < 0.93:
        kind = "color"
    else:
        kind = "generic"
    use_size = rng.random() < 0.3 and kind in ("full", "shape")
    size_word = f"{SIZES[size]} " if use_size else ""
    if use_size:
        mentions[SIZE] = size
    if kind == "full":
        body = f"{size_word}{COLORS[color]} {SHAPES[shape]}"
        mentions[SHAPE], mentions[COLOR] = shape, color
    elif kind == "shape":
        body = f"{size_word}{SHAPES[shape]}"
        mentions[SHAPE] = shape
    elif kind == "color":
        body = f"{COLORS[color]} {rng.choice(GENERIC_BODIES[1:])}"
        mentions[COLOR] = color
    else:
        body = str(rng.choice(GENERIC_BODIES))
    domain_name = DOMAINS[domain]
    if domain_name != "plain" and rng.random() < 0.35:
        words = DOMAIN_WORDS[domain_name]
        prefix = f"a {words[int(rng.integers(len(words)))]} of a"
        mentions[DOMAIN] = domain
    else:
        prefix = PREFIXES[int(rng.integers(len(PREFIXES)))]
    text = f"{prefix} {body}".strip()
    if rng.random() < 0.5 or not body:
        text = f"{text} ."
    return text, mentions


def vocabulary_corpus() -> list[str]:
    """Every string a mini-world caption or prompt can contain (to build the compact vocabulary)."""
    words = list(SHAPES) + list(COLORS) + list(SIZES) + list(GENERIC_BODIES) + list(PREFIXES)
    words += [w for ws in DOMAIN_WORDS.values() for w in ws]
    words += [t.format("x") for ts in EVAL_TEMPLATES.values() for t in ts]
    words += [FINETUNE_TEMPLATE.format("x"), "this is a photo of a", "this is not a photo of a", ".", ",", "of", "an", "a"]
    return words + list(BLANK_TEMPLATES)


def match_matrix(image_attrs: np.ndarray, mentions: np.ndarray) -> np.ndarray:
    """Boolean [B_img, B_cap]: caption j describes image i (all its mentioned attributes match).

    `image_attrs` [B, 4] holds (shape, colour, size, domain) per image; `mentions` [B, 4] as
    returned by `caption_for`.
    """
    img = image_attrs[:, None, :]
    cap = mentions[None, :, :]
    return np.all((cap < 0) | (cap == img), axis=-1)
