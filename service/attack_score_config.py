"""Settings and fitted parameters of the attack score (issue 15), torch-free.

One definition shared by the PyTorch score (`clipshield.models.attack_score`, differentiable, for calibration and
adaptive attacks), the NumPy score of the served path (`clipshield.service.attack_score_np`, no torch) and the
model card (`clipshield.service.card.AttackScoreCalibration`).
"""

from __future__ import annotations

from pydantic import Field, field_validator

from clipshield.service.config import StrictModel
from clipshield.service.errors import ConfigError

SIGNALS: tuple[str, ...] = ("tau", "anchor", "margin", "agreement", "median", "bits", "pixel_median")
SQUEEZE_SIGNALS: tuple[str, ...] = ("median", "bits")  # feature squeezing (Xu et al., NDSS 2018): one extra encoder pass each
# `pixel_median` reads the pixels alone (a median filter, no encoder pass): issue 26's cheap stand-in for `median`.
RANDOM_SIGNALS: tuple[str, ...] = ("tau",)  # drawn from noise; every other signal is a deterministic function of the image
# From the embedding a request already has (no extra encoder pass): a score of these alone runs on every request.
FREE_SIGNALS: tuple[str, ...] = ("anchor", "margin")


class AttackScoreConfig(StrictModel):
    """Which signals, their noise, and the logistic fit's settings."""

    # Issue 26: `pixel_median` replaced the embedding squeezers `median`, `bits` (3.0x -> 1.05x the request p50 on
    # ViT-B/32; card AUROC 0.998 -> 1.000 on both mini worlds; weaker on photo textures: docs/security.md section 5.2).
    signals: tuple[str, ...] = ("anchor", "margin", "pixel_median")
    n_noise: int = Field(default=4, ge=1, le=64, description="noise draws of `tau` (one encoder pass each)")
    noise_eps: float = Field(default=4 / 255, gt=0.0, le=1.0)
    median_size: int = Field(default=3, ge=3, le=9, description="side of the median window of `median` and `pixel_median` (odd)")
    bit_depth: int = Field(default=5, ge=1, le=8, description="bits per channel kept by the `bits` squeezer")
    l2: float = Field(default=1e-2, ge=0.0, description="ridge penalty of the logistic fit (standardised signals)")
    fit_iters: int = Field(default=100, ge=1)

    @property
    def is_random(self) -> bool:
        """Whether the score draws noise (an attacker needs EOT over it; the served path seeds it per image)."""
        return any(name in RANDOM_SIGNALS for name in self.signals)

    @property
    def is_free(self) -> bool:
        """Whether every signal comes from the request's own embedding (no extra encoder pass): the server then
        runs the detector on every request; otherwise only on requests that ask for the score."""
        return all(name in FREE_SIGNALS for name in self.signals)

    @field_validator("median_size")
    @classmethod
    def _odd_window(cls, size: int) -> int:
        if size % 2 == 0:
            raise ValueError(f"median_size must be odd (3, 5, 7 or 9), got {size}")
        return size


class ScoreParams(StrictModel):
    """A fitted, calibrated score: standardisation, logistic weights and the flag threshold."""

    signals: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    weights: tuple[float, ...]
    bias: float
    threshold: float
    target_fpr: float
    dataset: str
    n_calibration: int


def check_signals(signals: tuple[str, ...], has_reference: bool) -> None:
    """Raise ConfigError for unknown signals, or `agreement` without an original encoder."""
    unknown = [s for s in signals if s not in SIGNALS]
    if unknown or not signals:
        raise ConfigError(f"unknown or empty attack-score signals {unknown or list(signals)}; known: {', '.join(SIGNALS)}")
    if "agreement" in signals and not has_reference:
        raise ConfigError("the 'agreement' signal needs the original (non-robust) encoder as reference")
