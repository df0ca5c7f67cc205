"""Detector metrics, torch-free: AUROC, the threshold at a false-positive rate, TPR at a false-positive rate.

The one implementation used by the attack-score calibration at export (`clipshield.export.score_calibration`,
`clipshield.models.attack_score`), the detection evaluation (`clipshield.evaluation.detection`), the benchmarks
and the tests. Scores follow the served detector's convention: **higher = more suspicious**, and an input is
flagged when its score is strictly above the threshold. Inputs are 1-D score arrays (NumPy arrays, lists, or CPU
torch tensors, which convert through `__array__`); an empty, multi-dimensional or non-finite one, or a rate
outside (0, 1), raises `ConfigError` naming what was wrong.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Union

import numpy as np

from clipshield.service.errors import ConfigError

Scores = Union[np.ndarray, Sequence[float], Any]  # anything np.asarray reads as a 1-D float array (CPU tensors too)


def as_scores(scores: Scores, what: str = "scores") -> np.ndarray:
    """`scores` as a float64 [N] array; ConfigError when empty, not 1-D, or holding NaN / inf."""
    try:
        arr = np.asarray(scores, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{what} must be a 1-D array of numbers ({type(exc).__name__}: {exc})") from None
    if arr.ndim != 1:
        raise ConfigError(f"{what} must be a 1-D array of scores, got shape {list(arr.shape)}")
    if arr.size == 0:
        raise ConfigError(f"{what} is empty: at least one score is needed")
    if not np.isfinite(arr).all():
        raise ConfigError(f"{what} holds {int((~np.isfinite(arr)).sum())} non-finite value(s) (NaN or inf)")
    return arr


def check_rate(rate: float, what: str = "target_fpr") -> float:
    """`rate` as a float; ConfigError unless 0 < rate < 1."""
    if not 0.0 < float(rate) < 1.0:
        raise ConfigError(f"{what} must be a rate strictly between 0 and 1, got {rate}")
    return float(rate)


def auroc(negatives: Scores, positives: Scores) -> float:
    """P(score of a positive > score of a negative), ties counted half (the Mann-Whitney U / (n_pos n_neg)).

    negatives [N] (e.g. clean inputs), positives [P] (e.g. attacked ones); 0.5 is chance, 1 a perfect ranking."""
    neg = np.sort(as_scores(negatives, "negative scores"))
    pos = as_scores(positives, "positive scores")
    below = np.searchsorted(neg, pos, side="left")  # negatives strictly below each positive
    below_or_tied = np.searchsorted(neg, pos, side="right")
    return float((below.sum() + below_or_tied.sum()) / 2) / (len(pos) * len(neg))


def threshold_above_fpr(negatives: Scores, target_fpr: float) -> float:
    """Smallest observed score t with (negatives > t) on at most `target_fpr` of the negative scores [N].

    The flag `score > t` then fires on at most that share of the negatives (fewer when scores tie at t)."""
    rate = check_rate(target_fpr)
    ordered = np.sort(as_scores(negatives, "negative scores"))[::-1]
    return float(ordered[int(rate * len(ordered))])


def flag_rate(scores: Scores, threshold: float) -> float:
    """Share of `scores` [N] strictly above `threshold` (counted exactly, not as a float32 mean)."""
    arr = as_scores(scores)
    return int((arr > threshold).sum()) / len(arr)


def tpr_at_fpr(negatives: Scores, positives: Scores, fpr: float) -> float:
    """Share of positive scores [P] above the threshold that flags at most `fpr` of the negatives [N]."""
    return flag_rate(as_scores(positives, "positive scores"), threshold_above_fpr(negatives, fpr))
