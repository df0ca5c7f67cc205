"""Calibrate the served detector, the attack score (issues 15, 24), at export, for the model card (`card.attack_score`).

The one calibrator of the `flagged` response field: with `signals=("anchor",)` it is the anchor-only flag (the
cosine with the blank anchor, computed on every request at no extra cost); with more signals it is the richer
score. The first `n_calibration` images of `dataset` (any registered data set; clean,
and PGD-10 at the reference eps against that set's own zero-shot classifier) fit the logistic combination
of `clipshield.models.attack_score`, and the threshold sits at `target_fpr` on those clean images and `n_threshold`
more clean ones (taken after the held-out images; no attack needed, and the tail quantile is steadier from more
images); the next `n_eval` images after the fit ones give the held-out false-positive rate, and the detection
rate and AUROC of PGD at the reference eps.
The score's margin and anchor signals use the bundle's default head and anchor (`labels`), exactly what
the server computes, whatever data set calibrates it. Images are rounded to 8 bits first, as a PNG request
would be. A monitoring hint against non-adaptive attacks only (docs/security.md section 5.1).
"""

from __future__ import annotations

import logging
from typing import Optional

import torch
from pydantic import Field

from clipshield.models.attack_score import AttackScoreConfig, AttackScorer, SignalExtractor, calibrate_scorer
from clipshield.models.pixel_model import PixelCLIP
from clipshield.models.purify import blank_anchor
from clipshield.models.zero_shot import ZeroShotClassifier, build_text_head
from clipshield.service import bundle as B
from clipshield.service.card import AttackScoreCalibration, attack_label
from clipshield.service.config import StrictModel
from clipshield.service.detection_metrics import auroc, flag_rate, threshold_above_fpr

log = logging.getLogger(__name__)


class ScoreCalibrationConfig(StrictModel):
    """What to calibrate on: data set, split sizes, target false-positive rate, the attack, the score."""

    dataset: str = "miniworld/plain/color_shape/seen"
    n_calibration: int = Field(default=256, ge=8)
    n_eval: int = Field(default=256, ge=8)
    n_threshold: int = Field(
        default=0, ge=0, description="extra clean images (after the held-out ones) the threshold is also set on; no attack needed"
    )
    target_fpr: float = Field(default=0.05, gt=0.0, lt=1.0)
    eps: float = Field(default=4 / 255, gt=0.0)
    steps: int = Field(default=10, ge=1)
    score: AttackScoreConfig = AttackScoreConfig()
    seed: int = 0
    batch_size: int = Field(default=128, ge=1)


def quantize(images: torch.Tensor) -> torch.Tensor:
    """Round [0, 1] pixels to 8 bits, as PNG encoding does (float32 [B, 3, H, W] -> same)."""
    return torch.round(images.clamp(0, 1) * 255) / 255


def _pgd(classifier: ZeroShotClassifier, images: torch.Tensor, labels: torch.Tensor, cfg: ScoreCalibrationConfig) -> torch.Tensor:
    from clipshield.attacks import get_attack

    attack = get_attack("pgd")(
        classifier, eps=cfg.eps, alpha=cfg.eps / 4, steps=cfg.steps, generator=torch.Generator().manual_seed(cfg.seed)
    )
    bs = cfg.batch_size
    return torch.cat([attack(images[i : i + bs], labels[i : i + bs]) for i in range(0, len(images), bs)])


def _scores(scorer: AttackScorer, images: torch.Tensor, cfg: ScoreCalibrationConfig, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        return torch.cat([scorer(images[i : i + cfg.batch_size], g) for i in range(0, len(images), cfg.batch_size)])


def calibrate_attack_score(model: PixelCLIP, labels: B.LabelSet, cfg: Optional[ScoreCalibrationConfig] = None) -> AttackScoreCalibration:
    """Fit and calibrate the score for a bundle whose default label set is `labels` (see module docstring)."""
    from clipshield.datasets.registry import DatasetRequest, build_in_memory_dataset

    cfg = cfg or ScoreCalibrationConfig()
    model = model.eval()
    need = cfg.n_calibration + cfg.n_eval + cfg.n_threshold
    ds = build_in_memory_dataset(cfg.dataset, DatasetRequest(limit=need, preprocess=model.record.preprocess))
    images, targets = quantize(ds.images()), torch.tensor(ds.labels)
    if len(images) < need:
        raise ValueError(f"{cfg.dataset} has {len(images)} images; score calibration needs {need}")
    attacker = ZeroShotClassifier(model, build_text_head(model, list(ds.classnames), list(ds.templates))).eval()
    n, m = cfg.n_calibration, cfg.n_calibration + cfg.n_eval
    adv = quantize(_pgd(attacker, images[:m], targets[:m], cfg))
    served = ZeroShotClassifier(model, build_text_head(model, list(labels.classnames), list(labels.templates))).eval()
    extractor = SignalExtractor(served, blank_anchor(model, list(labels.templates)), cfg.score)
    scorer = calibrate_scorer(
        extractor, images[:n], adv[:n], cfg.target_fpr, cfg.dataset, torch.Generator().manual_seed(cfg.seed + 1), cfg.batch_size
    )
    if cfg.n_threshold:  # the tail quantile from the fit's clean images and the extra ones: a steadier threshold
        pool = torch.cat([images[:n], images[m:]])
        threshold = threshold_above_fpr(_scores(scorer, pool, cfg, cfg.seed + 1), cfg.target_fpr)
        scorer = AttackScorer(extractor, scorer.params.model_copy(update={"threshold": threshold}))
    clean, attacked = _scores(scorer, images[n:m], cfg, cfg.seed + 2), _scores(scorer, adv[n:m], cfg, cfg.seed + 3)
    name = attack_label("pgd", cfg.eps, cfg.steps)
    fpr = flag_rate(clean, scorer.params.threshold)
    rates = (
        B.FlagRate(attack=B.CLEAN, flag_rate=fpr, n=len(clean), dataset=cfg.dataset),
        B.FlagRate(
            attack=name,
            flag_rate=flag_rate(attacked, scorer.params.threshold),
            auroc=auroc(clean, attacked),
            n=len(attacked),
            dataset=cfg.dataset,
        ),
    )
    log.info(
        "attack score: threshold %.4f, held-out clean FPR %.3f, %s detected %.3f (AUROC %.3f)",
        scorer.params.threshold,
        fpr,
        name,
        rates[1].flag_rate,
        rates[1].auroc,
    )
    p = scorer.params
    notes = (
        f"attack score > {p.threshold:.4f} flags {p.target_fpr:.0%} of {n + cfg.n_threshold} clean {cfg.dataset} images; fitted on "
        f"{n} of those and {n} {name} images (step eps/4); rates on {cfg.n_eval} others. Margin and anchor use the bundle's default "
        "labels. A monitoring hint against non-adaptive attacks only: an attacker who knows it evades it.",
    )
    return AttackScoreCalibration(config=cfg.score, params=p, attack=name, seed=cfg.seed, rates=rates, notes=notes)
