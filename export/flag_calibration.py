"""Calibrate the serving `flagged` signal (a hint that an input may be adversarial) for the model card.

Score: the anchor cosine the server already reports (`anchor_score`: cosine of the image embedding
with the CLIPure blank-template anchor). L-inf PGD images of the mini world sit measurably further
from the anchor than clean ones, increasingly so with epsilon. The served `flagged` uses only this
calibrated score and `flipped` (purification changed the top-1); the L2 shift of the embedding by
per-sample purification is the same rotation for every input (docs/serving.md section 4), so it is
not a signal and is not served. The threshold `anchor_below` is the `target_fpr` quantile of
clean calibration images, so about `target_fpr` of clean inputs are flagged; flag rates (false
positives on held-out clean images, detection rates under each attack) and AUROC are measured on a
disjoint held-out split and recorded in the model card.

Images are rounded to 8 bits before scoring, as a PNG request would be. This is a detector of
non-adaptive attacks only: an attacker who knows the score can add a term keeping the anchor
cosine in range (see docs/security.md).
"""

from __future__ import annotations

import logging
from typing import Optional

import torch
from pydantic import Field

from clipshield.models.pixel_model import PixelCLIP
from clipshield.models.purify import blank_anchor
from clipshield.service import bundle as B
from clipshield.service.card import attack_label
from clipshield.service.config import StrictModel
from clipshield.service.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_ATTACKS: tuple[tuple[int, int], ...] = ((4, 10), (16, 10))  # (eps in 1/255, PGD steps)
DEFAULT_EXTRA_CLEAN: tuple[str, ...] = ("miniworld/noisy/color_shape/seen", "miniworld/textured/color_shape/seen")


class FlagCalibrationConfig(StrictModel):
    """What to calibrate on: data set, split sizes, target false-positive rate, attacks to report."""

    dataset: str = "miniworld/plain/color_shape/seen"
    n_calibration: int = Field(default=256, ge=8)
    n_eval: int = Field(default=256, ge=8)
    target_fpr: float = Field(default=0.05, gt=0.0, lt=1.0)
    attacks: tuple[tuple[int, int], ...] = DEFAULT_ATTACKS
    extra_clean: tuple[str, ...] = DEFAULT_EXTRA_CLEAN
    seed: int = 0
    batch_size: int = Field(default=128, ge=1)


def quantize(images: torch.Tensor) -> torch.Tensor:
    """Round [0, 1] pixels to 8 bits, as PNG encoding does (float32 [B, 3, H, W] -> same)."""
    return torch.round(images.clamp(0, 1) * 255) / 255


@torch.no_grad()
def anchor_scores(model: PixelCLIP, anchor: torch.Tensor, images: torch.Tensor, batch_size: int = 128) -> torch.Tensor:
    """Cosine [N] of each 8-bit-rounded image's embedding with the anchor [E] (images [N, 3, H, W] in [0, 1])."""
    a = anchor / anchor.norm()
    out = []
    for i in range(0, len(images), batch_size):
        e = model.encode_image(quantize(images[i : i + batch_size]))
        out.append((e / e.norm(dim=-1, keepdim=True)) @ a)
    return torch.cat(out).float()


def auroc(negatives: torch.Tensor, positives: torch.Tensor) -> float:
    """P(score of a positive > score of a negative), ties counted half (Mann-Whitney U / n1 n2)."""
    from scipy.stats import mannwhitneyu

    u = mannwhitneyu(positives.numpy(), negatives.numpy()).statistic
    return float(u) / (len(positives) * len(negatives))


def threshold_at_fpr(clean: torch.Tensor, target_fpr: float) -> float:
    """Largest threshold t with (clean < t) on at most `target_fpr` of the clean scores [N]."""
    ordered = torch.sort(clean).values
    k = int(target_fpr * len(ordered))  # number of clean scores allowed strictly below t
    return float(ordered[k])


def flag_rate(scores: torch.Tensor, anchor_below: float) -> float:
    """Fraction of scores [N] below `anchor_below` (counted exactly, not as a float32 mean)."""
    return int((scores < anchor_below).sum()) / max(len(scores), 1)


def calibrate_flag(model: PixelCLIP, cfg: Optional[FlagCalibrationConfig] = None) -> B.FlagCalibration:
    """Threshold at `cfg.target_fpr` on clean calibration images; held-out flag rates and AUROC."""
    from clipshield.datasets.registry import DatasetRequest, build_in_memory_dataset
    from clipshield.evaluation.measure import AttackRecipe, zero_shot_task
    from clipshield.evaluation.zeroshot import batches

    cfg = cfg or FlagCalibrationConfig()
    model = model.eval()
    ds, classifier, labels = zero_shot_task(model, cfg.dataset, cfg.n_calibration + cfg.n_eval)
    images = ds.images()
    if len(images) < cfg.n_calibration + cfg.n_eval:
        raise ConfigError(f"{cfg.dataset} has {len(images)} images; calibration needs {cfg.n_calibration + cfg.n_eval}")
    anchor = blank_anchor(model, ds.templates)
    cal, held, held_y = images[: cfg.n_calibration], images[cfg.n_calibration :], labels[cfg.n_calibration :]
    threshold = threshold_at_fpr(anchor_scores(model, anchor, cal, cfg.batch_size), cfg.target_fpr)
    clean = anchor_scores(model, anchor, held, cfg.batch_size)
    rates = [B.FlagRate(attack=B.CLEAN, flag_rate=flag_rate(clean, threshold), n=len(held), dataset=cfg.dataset)]
    for eps, steps in cfg.attacks:
        attack = AttackRecipe(eps=eps / 255, steps=steps).build(classifier, torch.Generator().manual_seed(cfg.seed))
        adv = torch.cat([attack(x, y) for x, y in batches(held, held_y, cfg.batch_size)])
        scores = anchor_scores(model, anchor, adv, cfg.batch_size)
        name = attack_label("pgd", eps / 255, steps)
        # A lower anchor cosine is more suspicious, so AUROC ranks the negated scores.
        rates.append(
            B.FlagRate(attack=name, flag_rate=flag_rate(scores, threshold), auroc=auroc(-clean, -scores), n=len(held), dataset=cfg.dataset)
        )
        log.info("flag %s: rate %.3f, AUROC %.3f", name, rates[-1].flag_rate, rates[-1].auroc)
    for name in cfg.extra_clean:
        other = build_in_memory_dataset(name, DatasetRequest(limit=cfg.n_eval, preprocess=model.record.preprocess)).images()
        rates.append(
            B.FlagRate(
                attack=B.CLEAN,
                flag_rate=flag_rate(anchor_scores(model, anchor, other, cfg.batch_size), threshold),
                n=len(other),
                dataset=name,
            )
        )
    notes = (
        f"flagged = anchor_score < {threshold:.4f} (the {cfg.target_fpr:.0%} quantile of {cfg.n_calibration} clean "
        f"{cfg.dataset} images), or purification flipped the top-1; rates measured on {cfg.n_eval} held-out images. "
        "A hint against non-adaptive attacks only; clean images of other domains may be flagged more often.",
    )
    return B.FlagCalibration(
        anchor_below=threshold,
        target_fpr=cfg.target_fpr,
        dataset=cfg.dataset,
        n_calibration=cfg.n_calibration,
        rates=tuple(rates),
        notes=notes,
    )
