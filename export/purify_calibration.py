"""Choose the serving default of CLIPure-Cos (steps, step size) by measurement, for the model card.

For each candidate (steps, step_size) of per-sample purification, measure on a labelled data set:
clean accuracy of the purified classifier, and robust accuracy under PGD through a straight-through
(BPDA) view of the purification (`clipshield.attacks.adaptive.StraightThroughPurified`), which is
the attack that does not suffer from the vanishing gradients of docs/methods.md §7.3. Baselines without
purification (clean, PGD) are measured too. Purification is on by default only when the candidate with
the best BPDA robust accuracy (among those keeping clean accuracy within `max_clean_drop` of the
baseline and rotating less than 90 degrees) beats the un-purified robust accuracy by `min_gain`;
otherwise it is off by default, and the card's `purify.chosen_by` and notes say so.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Optional

import torch
from pydantic import Field

from clipshield.models.pixel_model import PixelCLIP
from clipshield.models.purify import PurifiedClassifier, PurifyConfig, blank_anchor
from clipshield.service import bundle as B
from clipshield.service.card import attack_label
from clipshield.service.config import StrictModel

log = logging.getLogger(__name__)

# Candidates rotating the embedding 5.7 to 63 degrees towards the anchor; the reference's 10 x 30
# overshoots (see `overshoots`) and is never a serving default.
DEFAULT_GRID: tuple[tuple[int, float], ...] = ((1, 0.1), (1, 0.2), (2, 0.2), (1, 0.5), (2, 0.5), (1, 1.0))


class SweepConfig(StrictModel):
    """What to measure: data set, sample count, attack strength, candidates, selection rule."""

    dataset: str = "miniworld/plain/color_shape/seen"
    n: int = Field(default=256, ge=1)
    eps: float = Field(default=4 / 255, gt=0)
    steps: int = Field(default=10, ge=1)
    seed: int = 0
    batch_size: int = Field(default=128, ge=1)
    grid: tuple[tuple[int, float], ...] = DEFAULT_GRID
    max_clean_drop: float = Field(default=0.02, ge=0)
    # ~2 standard errors of an accuracy difference at n=256: smaller gains are noise
    min_gain: float = Field(default=0.05, ge=0)


SweepRow = B.PurifyMeasurement


class SweepResult(StrictModel):
    """The measured sweep (for the card), the chosen default, the accuracies it adds to the card."""

    sweep: B.PurifySweep
    chosen: B.PurifyDefaults
    accuracy: tuple[B.AccuracyEntry, ...]
    notes: tuple[str, ...]


def _accuracy(classifier, attack_model, images: torch.Tensor, labels: torch.Tensor, cfg: SweepConfig) -> tuple[float, float]:
    """Clean and PGD top-1 of `classifier`, the attack differentiating `attack_model` (evaluation runner)."""
    from clipshield.evaluation.measure import AttackRecipe, measure

    clean, robust, _ = measure(
        classifier, images, labels, AttackRecipe(eps=cfg.eps, steps=cfg.steps), cfg.batch_size, cfg.seed, target=attack_model
    )
    return clean, robust


def sweep_purification(model: PixelCLIP, cfg: Optional[SweepConfig] = None) -> SweepResult:
    """Measure every candidate of `cfg.grid` and choose the serving default (see module docstring)."""
    from clipshield.attacks.adaptive import StraightThroughPurified
    from clipshield.evaluation.measure import zero_shot_task

    cfg = cfg or SweepConfig()
    ds, plain, labels = zero_shot_task(model, cfg.dataset, cfg.n)
    images, head = ds.images(), plain.head
    anchor = blank_anchor(model, ds.templates)
    base_clean, base_pgd = _accuracy(plain, plain, images, labels, cfg)
    log.info("no purification: clean %.3f, PGD %.3f", base_clean, base_pgd)
    rows = []
    for steps, step_size in cfg.grid:
        pc = PurifiedClassifier(model, head, anchor, PurifyConfig(steps=steps, step_size=step_size, mode="per_sample"))
        clean, robust = _accuracy(pc, StraightThroughPurified(pc), images, labels, cfg)
        rows.append(SweepRow(steps=steps, step_size=step_size, clean=clean, robust_bpda=robust))
        log.info("purify steps=%d step_size=%g: clean %.3f, BPDA-PGD %.3f", steps, step_size, clean, robust)
    from clipshield.training.model_card import preprocessing

    return _choose(cfg, base_clean, base_pgd, rows, len(labels), preprocessing(model.record.preprocess))


def rotation_deg(steps: int, step_size: float) -> float:
    """Total rotation towards the anchor of per-sample purification (before any overshoot), degrees."""
    return math.degrees(steps * math.atan(step_size))


def overshoots(steps: int, step_size: float) -> bool:
    """True when the total rotation reaches 90 degrees: the embedding passes the anchor (section 4 of
    docs/serving.md; e.g. 10 x 30 turns every embedding about 881 degrees, back near where it started)."""
    return rotation_deg(steps, step_size) >= 90.0


def _choose(cfg: SweepConfig, base_clean: float, base_pgd: float, rows: Sequence[SweepRow], n: int, pre: str = "") -> SweepResult:
    """Default = best BPDA robust accuracy among eligible candidates, only if it beats no purification
    by `min_gain`; otherwise purification is off by default (the cheapest eligible setting is kept for
    requests that ask for it). Overshooting candidates and those losing clean accuracy are ineligible."""
    rows = [
        r.model_copy(update={"eligible": not overshoots(r.steps, r.step_size) and r.clean >= base_clean - cfg.max_clean_drop}) for r in rows
    ]
    keep = [r for r in rows if r.eligible]
    attack = attack_label("pgd", cfg.eps, cfg.steps)
    rule = (
        f"best straight-through (BPDA) {attack} robust accuracy among candidates that keep clean accuracy within "
        f"{cfg.max_clean_drop:.0%} of no purification and rotate less than 90 degrees; on only if it beats "
        f"no purification by at least {cfg.min_gain:.0%}"
    )
    best = max(keep, key=lambda r: (r.robust_bpda, -rotation_deg(r.steps, r.step_size))) if keep else None
    winner = best if best is not None and best.robust_bpda >= base_pgd + cfg.min_gain else None
    gain = winner is not None
    sweep = B.PurifySweep(
        dataset=cfg.dataset, n=n, attack=attack, baseline_clean=base_clean, baseline_robust=base_pgd, rule=rule, rows=tuple(rows), gain=gain
    )
    notes = []
    if winner is not None:
        chosen = B.PurifyDefaults(
            enabled=True,
            steps=winner.steps,
            step_size=winner.step_size,
            chosen_by=f"measured on {cfg.dataset} (n={n}): BPDA robust accuracy {winner.robust_bpda:.1%} "
            f"vs {base_pgd:.1%} without purification",
        )
    else:
        cheapest = min(keep, key=lambda r: (r.steps, r.step_size)) if keep else None
        chosen = B.PurifyDefaults(
            enabled=False,
            steps=cheapest.steps if cheapest else 0,
            step_size=cheapest.step_size if cheapest else 0.0,
            chosen_by=f"measured on {cfg.dataset} (n={n}): no robustness gain, so purification is off by "
            "default; steps and step size are the cheapest eligible candidate, used only when a request asks",
        )
        notes.append(
            f"Purification buys no robustness under adaptive attack on {cfg.dataset} (n={n}): robust accuracy "
            f"{base_pgd:.1%} without it, at most {max((r.robust_bpda for r in keep), default=0.0):.1%} with an eligible "
            f"setting under straight-through {attack} (gains under {cfg.min_gain:.0%} count as noise). It is off by default."
        )
    accuracy = [
        B.AccuracyEntry(dataset=cfg.dataset, attack=B.CLEAN, purified=False, value=base_clean, n=n, preprocessing=pre),
        B.AccuracyEntry(dataset=cfg.dataset, attack=attack, purified=False, value=base_pgd, n=n, preprocessing=pre),
    ]
    if winner is not None:
        accuracy += [
            B.AccuracyEntry(dataset=cfg.dataset, attack=B.CLEAN, purified=True, value=winner.clean, n=n, preprocessing=pre),
            B.AccuracyEntry(
                dataset=cfg.dataset,
                attack=attack_label("pgd", cfg.eps, cfg.steps, via="bpda"),
                purified=True,
                value=winner.robust_bpda,
                n=n,
                preprocessing=pre,
            ),
        ]
    return SweepResult(sweep=sweep, chosen=chosen, accuracy=tuple(accuracy), notes=tuple(notes))
