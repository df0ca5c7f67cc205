"""Evaluate the attack score (models/attack_score.py): AUROC, TPR at 1 % / 5 % FPR, the calibrated flag,
and an adaptive attacker who knows the score (issue 15).

Calibration: the first `n_calibration` images of `calibration_dataset` (clean, and PGD at the reference
eps) fit the logistic combination; the threshold sits at `target_fpr` on those clean images. Evaluation
images are disjoint (the next `n_eval` when a set is the calibration set). Per evaluation set and attack:
attack success (top-1 wrong), AUROC of the score (attacked vs clean), TPR at 1 % and 5 % FPR (thresholds
from that set's clean scores), and the calibrated flag's rate; clean images give the held-out FPR. The
adaptive rows run `ScoreAwarePGD` (loss - lambda * score, EOT over the score's noise) at the reference eps.

    clipshield evaluate --attack-score --datasets miniworld/plain/color_shape/seen --attacks pgd cw --out runs/detection

"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Optional

import torch
from pydantic import Field, field_validator

from clipshield.attacks import get_attack
from clipshield.attacks.adaptive_defences import PenaltyName, ScoreAwarePGD, UpsampleName
from clipshield.datasets import DatasetRequest, build_dataset
from clipshield.evaluation.zeroshot import batches
from clipshield.models.attack_score import AttackScoreConfig, AttackScorer, SignalExtractor, calibrate_scorer
from clipshield.models.pixel_model import PixelCLIP
from clipshield.models.purify import blank_anchor
from clipshield.models.zero_shot import ZeroShotClassifier, build_text_head
from clipshield.service.config import StrictModel
from clipshield.service.detection_metrics import auroc, tpr_at_fpr
from clipshield.service.errors import ConfigError

log = logging.getLogger(__name__)


class DetectionConfig(StrictModel):
    """One detection evaluation (eps in [0, 1] pixel units)."""

    calibration_dataset: str = "miniworld/plain/color_shape/seen"
    eval_datasets: tuple[str, ...] = ("miniworld/plain/color_shape/seen", "miniworld/plain/color_shape/heldout_caption")
    n_calibration: int = Field(default=128, ge=8)
    n_eval: int = Field(default=128, ge=8)
    target_fpr: float = Field(default=0.05, gt=0.0, lt=1.0)
    ref_eps: float = Field(default=4 / 255, gt=0.0)
    eps_factors: tuple[float, ...] = (0.5, 1.0, 2.0)
    attacks: tuple[str, ...] = ("pgd", "cw")
    steps: int = Field(default=10, ge=1)
    adaptive_lams: tuple[float, ...] = (0.0, 0.1, 1.0, 10.0)
    adaptive_penalties: tuple[PenaltyName, ...] = ("linear", "hinge")
    adaptive_eot: int = Field(default=2, ge=1)
    adaptive_blocks: tuple[int, ...] = Field(default=(1, 8), description="perturbation tile sides of the adaptive attacks (1: per pixel)")
    adaptive_upsample: tuple[UpsampleName, ...] = ("nearest", "bilinear")
    score: AttackScoreConfig = AttackScoreConfig()
    seed: int = 0
    batch_size: int = Field(default=128, gt=0)

    @field_validator("adaptive_blocks")
    @classmethod
    def _whole_tiles(cls, blocks: tuple[int, ...]) -> tuple[int, ...]:
        if not blocks or min(blocks) < 1:
            raise ValueError(f"adaptive perturbation tiles must be whole numbers >= 1 (1: per pixel), got {list(blocks)}")
        return blocks


OnRow = Callable[[str], object]


Variant = tuple[float, PenaltyName, int, UpsampleName]


def _variants(cfg: DetectionConfig) -> list[Variant]:
    """(lambda, penalty, block, upsampling) of each adaptive attack: lambda 0 (the attacker ignores the score) once
    per tiling; block 1 (per pixel) once, tiles > 1 with each upsampling."""
    zero: tuple[PenaltyName, ...] = ("linear",)
    pairs = [(lam, pen) for lam in cfg.adaptive_lams for pen in (cfg.adaptive_penalties if lam > 0 else zero)]
    tilings = [(b, up) for b in cfg.adaptive_blocks for up in (cfg.adaptive_upsample if b > 1 else ("nearest",))]
    return [(lam, pen, block, up) for block, up in tilings for lam, pen in pairs]


def variant_name(cfg: DetectionConfig, variant: Variant) -> str:
    """Row name of an adaptive attack, e.g. 'adaptive-pgd@4-l1-hinge-b8-bilinear'."""
    lam, pen, block, up = variant
    tiles = f"-b{block}-{up}" if block > 1 else ""
    return f"adaptive-pgd@{cfg.ref_eps * 255:g}-l{lam:g}" + (f"-{pen}" if lam > 0 else "") + tiles


def n_rows(cfg: DetectionConfig) -> int:
    """Progress units of `evaluate_detection`: the calibration, then each set's attacks and adaptive variants."""
    return 1 + len(cfg.eval_datasets) * (len(cfg.attacks) * len(cfg.eps_factors) + len(_variants(cfg)))


def _data(name: str, n: int, skip: int) -> tuple[torch.Tensor, torch.Tensor, list[str], list[str]]:
    ds = build_dataset(name, DatasetRequest(limit=skip + n))
    items = [ds[i] for i in range(skip, min(len(ds), skip + n))]
    images = torch.stack([img for img, _ in items]) if items else torch.empty(0)
    labels = torch.tensor([label for _, label in items], dtype=torch.int64)
    if len(items) < n:
        raise ConfigError(f"{name} has {len(ds)} images; need {skip + n}")
    return images, labels, list(ds.classnames), list(ds.templates)


def _run(attack, images: torch.Tensor, labels: torch.Tensor, bs: int) -> torch.Tensor:
    return torch.cat([attack(x, y) for x, y in batches(images, labels, bs)])


def _scores(scorer: AttackScorer, images: torch.Tensor, bs: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        return torch.cat([scorer(images[i : i + bs], g) for i in range(0, len(images), bs)])


def _wrong(clf: ZeroShotClassifier, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return clf(images).argmax(-1) != labels


def _row(scorer: AttackScorer, clean: torch.Tensor, adv_scores: torch.Tensor, wrong: torch.Tensor) -> dict[str, float]:
    flagged = scorer.flag(adv_scores)
    return {
        "success": float(wrong.float().mean()),
        "auroc": auroc(clean, adv_scores),
        "tpr_fpr1": tpr_at_fpr(clean, adv_scores, 0.01),
        "tpr_fpr5": tpr_at_fpr(clean, adv_scores, 0.05),
        "flagged": float(flagged.float().mean()),
        "success_unflagged": float((wrong & ~flagged).float().mean()),
    }


def calibrate(model: PixelCLIP, cfg: DetectionConfig, reference: Optional[PixelCLIP] = None) -> AttackScorer:
    """Fit and calibrate the score on `cfg.calibration_dataset` (clean vs PGD at the reference eps)."""
    images, labels, classnames, templates = _data(cfg.calibration_dataset, cfg.n_calibration, 0)
    clf = ZeroShotClassifier(model, build_text_head(model, classnames, templates)).eval()
    pgd = get_attack("pgd")(clf, eps=cfg.ref_eps, alpha=cfg.ref_eps / 4, steps=cfg.steps, generator=torch.Generator().manual_seed(cfg.seed))
    adv = _run(pgd, images, labels, cfg.batch_size)
    extractor = SignalExtractor(clf, blank_anchor(model, templates), cfg.score, reference)
    return calibrate_scorer(
        extractor, images, adv, cfg.target_fpr, cfg.calibration_dataset, torch.Generator().manual_seed(cfg.seed + 1), cfg.batch_size
    )


def evaluate_set(
    model: PixelCLIP, scorer: AttackScorer, name: str, cfg: DetectionConfig, on_row: OnRow = lambda _: None
) -> dict[str, dict[str, float]]:
    """Rows for one evaluation set: 'clean' (held-out FPR), '<attack>@<eps*255>' and 'adaptive-l<lambda>'."""
    skip = cfg.n_calibration if name == cfg.calibration_dataset else 0
    images, labels, classnames, templates = _data(name, cfg.n_eval, skip)
    clf = ZeroShotClassifier(model, build_text_head(model, classnames, templates)).eval()
    local = AttackScorer(SignalExtractor(clf, scorer.extractor.anchor, cfg.score, scorer.extractor.reference), scorer.params)
    clean = _scores(local, images, cfg.batch_size, cfg.seed + 2)
    rows = {"clean": {"flagged": float(local.flag(clean).float().mean()), "success": float(_wrong(clf, images, labels).float().mean())}}
    for attack in cfg.attacks:
        for f in cfg.eps_factors:
            eps = cfg.ref_eps * f
            atk = get_attack(attack)(clf, eps=eps, alpha=eps / 4, steps=cfg.steps, generator=torch.Generator().manual_seed(cfg.seed))
            adv = _run(atk, images, labels, cfg.batch_size)
            rows[f"{attack}@{eps * 255:g}"] = _row(
                local, clean, _scores(local, adv, cfg.batch_size, cfg.seed + 3), _wrong(clf, adv, labels)
            )
            log.info("%s %s@%g: %s", name, attack, eps * 255, rows[f"{attack}@{eps * 255:g}"])
            on_row(f"{name} {attack}@{eps * 255:g}")
    rows.update(adaptive_rows(clf, local, images, labels, clean, cfg, on_row))
    return rows


def adaptive_rows(
    clf: ZeroShotClassifier,
    scorer: AttackScorer,
    images: torch.Tensor,
    labels: torch.Tensor,
    clean: torch.Tensor,
    cfg: DetectionConfig,
    on_row: OnRow = lambda _: None,
) -> dict[str, dict[str, float]]:
    """One row per (lambda, penalty, block) of `ScoreAwarePGD` at the reference eps (lambda 0: the attacker ignores
    the score; block > 1: perturbations constant on block x block tiles, which a median filter cannot remove), and
    'adaptive-best': per image, the attacker wins if any variant gives a misclassified, unflagged image (the
    defender's worst case)."""
    rows: dict[str, dict[str, float]] = {}
    evaded = torch.zeros(len(labels), dtype=torch.bool)
    for variant in _variants(cfg):
        lam, pen, block, up = variant
        atk = ScoreAwarePGD(
            clf,
            scorer,
            eps=cfg.ref_eps,
            lam=lam,
            alpha=cfg.ref_eps / 4,
            steps=cfg.steps,
            eot=cfg.adaptive_eot,
            penalty=pen,
            generator=torch.Generator().manual_seed(cfg.seed + 4),
            block=block,
            upsample=up,
        )
        adv = _run(atk, images, labels, cfg.batch_size)
        scores, wrong = _scores(scorer, adv, cfg.batch_size, cfg.seed + 3), _wrong(clf, adv, labels)
        name = variant_name(cfg, variant)
        rows[name] = _row(scorer, clean, scores, wrong)
        evaded |= wrong & ~scorer.flag(scores)
        on_row(name)
    rows["adaptive-best"] = {"success_unflagged": float(evaded.float().mean())}
    return rows


def evaluate_detection(
    model: PixelCLIP, cfg: DetectionConfig, reference: Optional[PixelCLIP] = None, on_row: OnRow = lambda _: None
) -> dict:
    """Calibrated score parameters and per-set rows (see `evaluate_set`); `on_row(name)` after each row."""
    scorer = calibrate(model.eval(), cfg, reference)
    on_row("calibration")
    return {
        "config": cfg.model_dump(),
        "score": scorer.params.model_dump(),
        "sets": {name: evaluate_set(model, scorer, name, cfg, on_row) for name in cfg.eval_datasets},
    }


def markdown(result: dict) -> str:
    """Markdown table of `evaluate_detection`'s result (rates in %)."""
    p = result["score"]
    lines = [
        f"Score: logistic on {', '.join(p['signals'])}; weights {[round(w, 2) for w in p['weights']]}; threshold {p['threshold']:.3f} "
        f"({p['target_fpr']:.0%} FPR on {p['n_calibration']} clean `{p['dataset']}`).",
        "",
        "| set | input | success | AUROC | TPR@1%FPR | TPR@5%FPR | flagged | success & unflagged |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, rows in result["sets"].items():
        for kind, r in rows.items():
            cells = [
                f"{100 * r[k]:.1f}" if k in r else "-" for k in ("success", "auroc", "tpr_fpr1", "tpr_fpr5", "flagged", "success_unflagged")
            ]
            if "auroc" in r:
                cells[1] = f"{r['auroc']:.3f}"
            lines.append(f"| {name} | {kind} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
