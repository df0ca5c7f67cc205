"""The mini world's vocabulary: shapes, colours, sizes, domains and held-out combinations.

The mini world stands in for web-scale image-text data in an environment that cannot download
weights or data sets. Everything here is plain data so that rendering, captioning and the
zero-shot data sets agree on one definition.
"""

from __future__ import annotations

from enum import IntEnum

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "star", "cross", "heart", "crescent")
COLORS: tuple[str, ...] = ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink")
COLOR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "orange": (245, 140, 25),
    "yellow": (240, 225, 40),
    "green": (40, 165, 55),
    "cyan": (40, 205, 215),
    "blue": (35, 65, 215),
    "purple": (135, 45, 185),
    "pink": (245, 135, 200),
}
SIZES: tuple[str, ...] = ("small", "large")
DOMAINS: tuple[str, ...] = ("plain", "noisy", "textured", "outlined")
BACKGROUNDS: tuple[tuple[int, int, int], ...] = ((55, 55, 55), (120, 120, 120), (185, 185, 185))
IMAGE_SIZE = 32

# Words a caption may use to name the domain (optional in captions, never needed for labels).
DOMAIN_WORDS: dict[str, tuple[str, ...]] = {
    "plain": ("photo",),
    "noisy": ("noisy photo", "grainy photo"),
    "textured": ("striped photo", "checkered photo"),
    "outlined": ("outline", "line drawing"),
}


class Split(IntEnum):
    """Seed namespaces: images of different splits never share a generator seed."""

    TRAIN = 0
    VAL = 1
    TEST = 2


def holdout_kind(shape: int, color: int) -> str:
    """Return 'seen', 'heldout_image' or 'heldout_caption' for a colour-shape combination.

    A Latin square: (colour - shape) mod 8 == 0 is never rendered during pre-training
    (compositional generalisation), == 4 is rendered but never captioned jointly (new label
    combinations). Every shape misses two colours and every colour misses two shapes.
    """
    d = (color - shape) % len(COLORS)
    if d == 0:
        return "heldout_image"
    if d == len(COLORS) // 2:
        return "heldout_caption"
    return "seen"


def combos(kind: str) -> list[tuple[int, int]]:
    """All (shape, colour) index pairs of one hold-out kind, in shape-major order."""
    return [(s, c) for s in range(len(SHAPES)) for c in range(len(COLORS)) if holdout_kind(s, c) == kind]


def combo_name(shape: int, color: int) -> str:
    """Class name of a colour-shape combination, e.g. 'red circle'."""
    return f"{COLORS[color]} {SHAPES[shape]}"
