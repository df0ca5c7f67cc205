"""Deterministic renderer of mini-world images (square RGB, one centred shape; 32x32 by default).

Every image is a pure function of its attributes, a per-image seed and the render size, so data sets
are reproducible without storing pixels. Shapes are drawn at 4x resolution with Pillow and box-filtered
down, which gives anti-aliased edges at ~1 ms per image on one core (32 px). Every length (radius,
jitter, outline, texture period) is given at 32 px and scaled with the render size, so a 56-px image
is the same scene with finer edges (the 224-px world renders at 56 px, `clipshield.datasets.miniworld.worlds`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from clipshield.datasets.miniworld.world import BACKGROUNDS, COLOR_RGB, COLORS, DOMAINS, IMAGE_SIZE, SHAPES, SIZES

_SUPERSAMPLE = 4
_RADIUS = {"small": 9.5, "large": 12.5}  # pixels at 32x32
_JITTER = 1.5  # max centre offset, pixels
_MAX_ROTATION = 15.0  # degrees
_NOISE_STD = 0.08
_OUTLINE_WIDTH = 1.5  # pixels at 32x32


@dataclass(frozen=True)
class ImageSpec:
    """Attributes of one mini-world image (indices into the world's tuples)."""

    shape: int
    color: int
    size: int
    domain: int
    background: int
    seed: int


def _unit_polygon(shape: str) -> list[tuple[float, float]]:
    """Outline of a shape with circumradius ~1, centred on the origin, y pointing down."""
    if shape == "circle":
        return [(math.cos(t), math.sin(t)) for t in np.linspace(0, 2 * math.pi, 48, endpoint=False)]
    if shape == "square":
        s = 0.8
        return [(-s, -s), (s, -s), (s, s), (-s, s)]
    if shape == "triangle":
        return [(math.cos(t), math.sin(t) + 0.15) for t in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    if shape == "diamond":
        return [(0, -1), (0.75, 0), (0, 1), (-0.75, 0)]
    if shape == "star":
        pts = []
        for k in range(10):
            r = 1.0 if k % 2 == 0 else 0.42
            t = -math.pi / 2 + k * math.pi / 5
            pts.append((r * math.cos(t), r * math.sin(t)))
        return pts
    if shape == "cross":
        a, b = 0.3, 0.9
        return [(-a, -b), (a, -b), (a, -a), (b, -a), (b, a), (a, a), (a, b), (-a, b), (-a, a), (-b, a), (-b, -a), (-a, -a)]
    if shape == "heart":
        ts = np.linspace(0, 2 * math.pi, 48, endpoint=False)
        return [
            (math.sin(t) ** 3, -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)) / 16 - 0.15) for t in ts
        ]
    if shape == "crescent":
        # Outer arc on the left, inner arc (circle offset to the right) back up.
        outer = [(math.cos(t), math.sin(t)) for t in np.linspace(0.35 * math.pi, 1.65 * math.pi, 28)]
        inner = [(0.45 + 0.8 * math.cos(t), 0.8 * math.sin(t)) for t in np.linspace(1.45 * math.pi, 0.55 * math.pi, 22)]
        return outer + inner
    raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")


_UNIT_POLYGONS = {name: np.asarray(_unit_polygon(name), dtype=np.float64) for name in SHAPES}


def _textured_background(rng: np.random.Generator, base: tuple[int, int, int], size: int) -> np.ndarray:
    """Stripes or a checkerboard in two shades of the background grey (period 2-4 px at 32 px, scaled)."""
    light = np.clip(np.asarray(base, dtype=np.float32) + 45.0, 0, 255)
    dark = np.clip(np.asarray(base, dtype=np.float32) - 45.0, 0, 255)
    period = int(rng.integers(2, 5)) * size / IMAGE_SIZE
    yy, xx = np.mgrid[0:size, 0:size]
    yy, xx = np.floor(yy / period).astype(np.int64), np.floor(xx / period).astype(np.int64)
    kind = int(rng.integers(0, 3))
    if kind == 0:
        mask = xx % 2 == 0
    elif kind == 1:
        mask = yy % 2 == 0
    else:
        mask = (xx + yy) % 2 == 0
    return np.where(mask[..., None], light, dark).astype(np.float32)


def render(spec: ImageSpec, size: int = IMAGE_SIZE) -> np.ndarray:
    """Render one image as uint8 [size, size, 3]; identical output for an identical (spec, size)."""
    rng = np.random.default_rng(spec.seed)
    shape, color = SHAPES[spec.shape], COLORS[spec.color]
    domain = DOMAINS[spec.domain]
    scale = size / IMAGE_SIZE
    big = size * _SUPERSAMPLE
    bg = BACKGROUNDS[spec.background]

    radius = _RADIUS[SIZES[spec.size]] * scale * _SUPERSAMPLE
    centre = (
        big / 2 + rng.uniform(-_JITTER, _JITTER) * scale * _SUPERSAMPLE,
        big / 2 + rng.uniform(-_JITTER, _JITTER) * scale * _SUPERSAMPLE,
    )
    angle = math.radians(rng.uniform(-_MAX_ROTATION, _MAX_ROTATION))
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    pts = _UNIT_POLYGONS[shape] @ rot.T * radius + np.asarray(centre)
    polygon = [tuple(p) for p in pts.tolist()]

    mask_img = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(mask_img)
    if domain == "outlined":
        draw.line(polygon + [polygon[0]], fill=255, width=int(_OUTLINE_WIDTH * scale * _SUPERSAMPLE), joint="curve")
    else:
        draw.polygon(polygon, fill=255)
    mask = np.asarray(mask_img.resize((size, size), Image.Resampling.BOX), dtype=np.float32)[..., None] / 255.0

    fg = np.broadcast_to(np.asarray(COLOR_RGB[color], dtype=np.float32), (size, size, 3))
    if domain == "textured":
        background = _textured_background(rng, bg, size)
        diagonal = np.floor((np.arange(size)[None, :] + np.arange(size)[:, None]) / (2 * scale)).astype(np.int64)
        fg = np.where((diagonal % 2 == 0)[..., None], fg, fg * 0.65)
    else:
        background = np.broadcast_to(np.asarray(bg, dtype=np.float32), (size, size, 3))
    out = mask * fg + (1.0 - mask) * background
    if domain == "noisy":
        out = out + rng.normal(0.0, _NOISE_STD * 255.0, size=out.shape)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
