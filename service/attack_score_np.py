"""The attack score on the served path: NumPy over any `encode(pixels) -> embeddings` callable (no torch).

Same signals and combination as `clipshield.models.attack_score` (the PyTorch definition, differentiable, used to
calibrate the score and by adaptive attackers); `tests/unit/test_attack_score_np.py` holds the two to the
same numbers on the same images and noise. Signals per image x, from forward passes only:
`tau` (mean shift of the unit-norm embedding under `n_noise` uniform noise draws), `anchor` (cosine with
the blank anchor), `margin` (top-1 minus top-2 logit of the default head), `agreement` (cosine with an
original encoder's embedding, when one is given), `median` and `bits` (shift of the unit-norm embedding
under a median filter / bit-depth reduction: feature squeezing), `pixel_median` (mean absolute difference between the
pixels and their median-filtered copy: the same squeezer judged in pixel space, no encoder pass). Score: ((signals - mean) / std) . weights + bias, a
logit; the image counts as flagged when the score is above the calibrated threshold.

The noise of an image is drawn from a generator seeded by a digest of its pixels (and an operator seed),
so an image gets the same score every time, whatever its batch mates, on every replica.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Optional

import numpy as np

from clipshield.service import purify_np
from clipshield.service.attack_score_config import AttackScoreConfig, ScoreParams, check_signals
from clipshield.service.errors import BadInput, ConfigError

Encode = Callable[[np.ndarray], np.ndarray]


def image_seed(pixels: np.ndarray, seed: int = 0) -> int:
    """64-bit noise seed of one image [3, H, W]: blake2b of its float32 pixels and `seed`."""
    digest = hashlib.blake2b(
        np.ascontiguousarray(pixels, dtype=np.float32).tobytes(), digest_size=8, key=int(seed).to_bytes(8, "little", signed=True)
    )
    return int.from_bytes(digest.digest(), "little")


def draw_noise(pixels: np.ndarray, seeds: Sequence[int], cfg: AttackScoreConfig) -> np.ndarray:
    """U(-noise_eps, noise_eps) noise [n_noise, B, 3, H, W] float32, image b's from its own generator `seeds[b]`."""
    per_image = [np.random.default_rng(s).random((cfg.n_noise, *pixels.shape[1:]), dtype=np.float32) for s in seeds]
    noise = np.stack(per_image, axis=1) if per_image else np.zeros((cfg.n_noise, *pixels.shape), np.float32)
    return np.asarray((noise * 2 - 1) * np.float32(cfg.noise_eps), dtype=np.float32)


def tau(encode: Encode, pixels: np.ndarray, unit_base: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """Mean shift [B] of the unit-norm embedding under each noise draw (clamped so x + n stays in [0, 1]).

    All n_noise x B noisy copies go through the encoder in one call (one batch: fewer runtime calls)."""
    noisy = (pixels[None] + np.clip(noise, -pixels[None], 1 - pixels[None])).reshape(-1, *pixels.shape[1:])
    moved = purify_np.normalize(encode(noisy).astype(np.float32)).reshape(len(noise), len(pixels), -1)
    shifts: np.ndarray = np.mean(np.sqrt(np.sum((moved - unit_base[None]) ** 2, axis=-1)), axis=0)
    return shifts


def median_squeeze(pixels: np.ndarray, size: int) -> np.ndarray:
    """Median over each `size` x `size` window (odd size, reflect padding) of pixels [B, C, H, W]; same shape.

    np.partition picks the middle element (exactly np.median's value for an odd window, half its time: the
    mean of two partitions is not needed)."""
    half, k = size // 2, size * size // 2
    padded = np.pad(pixels, ((0, 0), (0, 0), (half, half), (half, half)), mode="reflect")
    windows = np.lib.stride_tricks.sliding_window_view(padded, (size, size), axis=(2, 3))  # [B, C, H, W, size, size]
    squeezed: np.ndarray = np.partition(windows.reshape(*pixels.shape, size * size), k, axis=-1)[..., k].astype(np.float32)
    return squeezed


def pixel_median(pixels: np.ndarray, size: int) -> np.ndarray:
    """Mean |pixels - median_squeeze(pixels)| [B] over C, H, W (float32 pixels [B, C, H, W]): no encoder pass."""
    return np.asarray(np.mean(np.abs(pixels - median_squeeze(pixels, size)), axis=(1, 2, 3), dtype=np.float64))


def bit_squeeze(pixels: np.ndarray, bits: int) -> np.ndarray:
    """Pixels [B, C, H, W] in [0, 1] rounded to 2**bits - 1 levels (half to even, as torch rounds)."""
    levels = np.float32(2**bits - 1)
    return np.asarray(np.round(pixels * levels) / levels, dtype=np.float32)


def squeeze_shift(encode: Encode, squeezed: np.ndarray, unit_base: np.ndarray) -> np.ndarray:
    """Shift [B] of the unit-norm embedding from `unit_base` [B, E] to the squeezed pixels' embedding."""
    moved = purify_np.normalize(encode(squeezed).astype(np.float32))
    shift: np.ndarray = np.sqrt(np.sum((moved - unit_base) ** 2, axis=-1))
    return shift


def margin(unit_base: np.ndarray, head: np.ndarray, logit_scale: float) -> np.ndarray:
    """Top-1 minus top-2 zero-shot logit [B] (head [C, E], C >= 2)."""
    top2 = -np.sort(-purify_np.logits(unit_base, head, logit_scale), axis=-1)[:, :2]
    gap: np.ndarray = top2[:, 0] - top2[:, 1]
    return gap


class NumpyAttackScorer:
    """Calibrated attack score over an encoder callable.

    Tensor contract: pixels float32 [B, 3, H, W] in [0, 1] and their encoder embeddings [B, E] (any norm)
    -> scores float64 [B]. `head` [C, E] unit-norm rows and `anchor` [E] are the bundle's default ones
    (the score is calibrated on them); `reference` is the original encoder for `agreement`.
    """

    def __init__(
        self,
        cfg: AttackScoreConfig,
        params: ScoreParams,
        encode: Encode,
        head: np.ndarray,
        anchor: np.ndarray,
        logit_scale: float,
        reference: Optional[Encode] = None,
    ) -> None:
        check_signals(cfg.signals, reference is not None)
        if tuple(params.signals) != tuple(cfg.signals) or not len(params.mean) == len(params.std) == len(params.weights) == len(
            cfg.signals
        ):
            raise ConfigError(f"score fitted on signals {params.signals}, configured for {cfg.signals}")
        if "margin" in cfg.signals and head.shape[0] < 2:
            raise ConfigError("the 'margin' signal needs at least 2 classes in the default head")
        self.cfg, self.params = cfg, params
        self.encode, self.reference = encode, reference
        self.head, self.anchor, self.logit_scale = head.astype(np.float32), anchor.astype(np.float32), float(logit_scale)
        self._mean, self._std = np.asarray(params.mean, np.float64), np.asarray(params.std, np.float64)
        self._weights = np.asarray(params.weights, np.float64)

    def signals(self, pixels: np.ndarray, embeddings: np.ndarray, noise: np.ndarray) -> np.ndarray:
        """Raw signals [B, S] (columns in `cfg.signals` order); `noise` [n_noise, B, 3, H, W] as `draw_noise` gives."""
        if pixels.size and (pixels.min() < 0 or pixels.max() > 1):
            raise BadInput("the attack score takes images in [0, 1] pixel space")
        unit = purify_np.normalize(np.asarray(embeddings, dtype=np.float32))
        columns = []
        for name in self.cfg.signals:
            if name == "tau":
                columns.append(tau(self.encode, pixels, unit, noise))
            elif name == "anchor":
                columns.append(purify_np.cosine(unit, self.anchor))
            elif name == "margin":
                columns.append(margin(unit, self.head, self.logit_scale))
            elif name == "median":
                columns.append(squeeze_shift(self.encode, median_squeeze(pixels, self.cfg.median_size), unit))
            elif name == "bits":
                columns.append(squeeze_shift(self.encode, bit_squeeze(pixels, self.cfg.bit_depth), unit))
            elif name == "pixel_median":
                columns.append(pixel_median(pixels, self.cfg.median_size))
            else:  # agreement (checked in __init__)
                ref = purify_np.normalize(self.reference(pixels).astype(np.float32))  # type: ignore[misc]
                columns.append(np.sum(unit * ref, axis=-1))
        return np.stack(columns, axis=-1).astype(np.float64)

    def combine(self, signals: np.ndarray) -> np.ndarray:
        """Scores [B] from raw signals [B, S]."""
        return ((signals - self._mean) / self._std) @ self._weights + self.params.bias

    def score(self, pixels: np.ndarray, embeddings: np.ndarray, seed: int = 0) -> np.ndarray:
        """Scores [B], each image's noise drawn from `image_seed(its pixels, seed)`."""
        pixels = np.asarray(pixels, dtype=np.float32)
        if self.cfg.is_random:
            noise = draw_noise(pixels, [image_seed(p, seed) for p in pixels], self.cfg)
        else:  # no signal reads noise: skip hashing the pixels and drawing it (the served anchor-only flag runs per request)
            noise = np.zeros((0, *pixels.shape), np.float32)
        return self.combine(self.signals(pixels, embeddings, noise))

    def flag(self, scores: np.ndarray) -> np.ndarray:
        """Bool [B]: score above the calibrated threshold."""
        return np.asarray(scores) > self.params.threshold
