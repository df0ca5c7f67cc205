"""The one model card, from fine-tuning through export into the bundle, the archive and the server.

`clipshield.training.model_card` fills the training half (method, the hyper-parameters that actually ran,
base model, data, per-data-set accuracy) next to a fine-tuned checkpoint; `clipshield.export`
copies that card into the bundle and adds ONNX parity, the purification default and, only when
measured, the purification sweep and the detector's calibration (`attack_score`, the one adversarial-input
detector behind the `flagged` response field); `clipshield.service.inference` serves it (the
describe answer and the `clipshield_model_accuracy` gauges). Every accuracy names its attack with
`attack_label`, the one spelling of an attack in cards, metric labels, the demo and the docs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import Field, model_validator

from clipshield.service.attack_score_config import AttackScoreConfig, ScoreParams
from clipshield.service.config import StrictModel
from clipshield.service.precision import PrecisionInfo

# 3: one detector (issue 24): the `flag` section of schema <= 2 cards is gone, converted on reading (`_one_detector`).
SCHEMA_VERSION = 3
CLEAN = "none"  # the attack label of clean (un-attacked) inputs


def attack_label(kind: str, eps: float, steps: int, norm: str = "linf", via: Optional[str] = None) -> str:
    """Metric-label spelling of an attack: `pgd10-linf-4/255`, `bpda-pgd10-linf-4/255`; eps in [0, 1] pixels.

    `eps == 0` or `steps == 0` is no attack (`CLEAN`). Used by the cards, the demo and serving gauges.
    """
    if eps <= 0 or steps <= 0:
        return CLEAN
    label = f"{kind}{steps}-{norm}-{round(eps * 255, 3):g}/255"
    return f"{via}-{label}" if via else label


class AccuracyEntry(StrictModel):
    """One measured top-1 accuracy (fraction in [0, 1]) for the card and its metrics gauges.

    `attack` is an `attack_label`; `preprocessing` says how the images reached the model.
    """

    dataset: str
    attack: str
    purified: bool
    value: float = Field(ge=0.0, le=1.0)
    n: int = Field(ge=0)
    preprocessing: str = ""


class PurifyDefaults(StrictModel):
    """Model-default CLIPure-Cos settings (per-sample steps; see `clipshield.service.purify_np`).

    Off unless a measurement (`PurifySweep`) found a robustness gain; `steps`/`step_size` are what a
    request asking for purification gets. `chosen_by` says how the default was set, never more.
    """

    enabled: bool = False
    steps: int = Field(default=1, ge=0, le=1000)
    step_size: float = Field(default=0.1, ge=0.0)
    chosen_by: str = "not measured: off by default (requests may ask for it; `clipshield export --measure-purify N` measures it)"


class PurifyMeasurement(StrictModel):
    """One measured purification candidate: clean and straight-through (BPDA) PGD robust accuracy."""

    steps: int
    step_size: float
    clean: float
    robust_bpda: float
    eligible: bool = True


class PurifySweep(StrictModel):
    """The measured purification candidates and the un-purified baseline they were compared with."""

    dataset: str
    n: int = Field(ge=1)
    attack: str
    baseline_clean: float
    baseline_robust: float
    rule: str
    rows: tuple[PurifyMeasurement, ...]
    gain: bool


class ParityReport(StrictModel):
    """Max abs difference of ONNX Runtime vs PyTorch embeddings per checked input."""

    image_batch_1: float
    image_batch_8: float
    text: float
    tolerance: float
    opset: int


class FlagRate(StrictModel):
    """Measured flag rate and AUROC (score vs clean images) for one input kind on held-out images."""

    attack: str
    flag_rate: float = Field(ge=0.0, le=1.0)
    auroc: Optional[float] = Field(default=None, ge=0.0, le=1.0)
    n: int = Field(ge=0)
    dataset: Optional[str] = None


class AttackScoreCalibration(StrictModel):
    """The calibrated detector (`clipshield.models.attack_score`; served by `clipshield.service.attack_score_np`):
    `flagged` in a response is its decision. With the one signal `anchor` it is the anchor-only flag.

    `config` (signals, noise) and `params` (standardisation, logistic weights, threshold at `params.target_fpr`
    on `params.n_calibration` clean images of `params.dataset`) are what serving computes; the fit used those
    clean images and the same number attacked by `attack`. `rates` are measured on held-out images of the
    calibration data set (clean first: its flag_rate is the false-positive rate; AUROC: score, attacked vs clean).
    """

    config: AttackScoreConfig
    params: ScoreParams
    attack: str
    seed: int = 0
    rates: tuple[FlagRate, ...] = ()
    notes: tuple[str, ...] = ()


class LegacyFlagCalibration(StrictModel):
    """The `flag` section of schema <= 2 cards (bundle format 1): flagged when `anchor_score < anchor_below`.

    Read only to convert it into the equivalent one-signal detector (`score_from_legacy_flag`)."""

    score: Literal["anchor_score"] = "anchor_score"
    anchor_below: float = Field(ge=-1.0, le=1.0)
    target_fpr: float = Field(gt=0.0, lt=1.0)
    dataset: str
    n_calibration: int = Field(ge=1)
    rates: tuple[FlagRate, ...] = ()
    notes: tuple[str, ...] = ()


def score_from_legacy_flag(flag: LegacyFlagCalibration) -> AttackScoreCalibration:
    """The one-signal (anchor) detector deciding exactly as a legacy flag: score = -anchor_score, flagged when
    score > -anchor_below, i.e. anchor_score < anchor_below (negation is exact in floating point). The flag's
    AUROCs were measured on the negated anchor cosine, so its rates carry over unchanged."""
    params = ScoreParams(
        signals=("anchor",),
        mean=(0.0,),
        std=(1.0,),
        weights=(-1.0,),
        bias=0.0,
        threshold=-flag.anchor_below,
        target_fpr=flag.target_fpr,
        dataset=flag.dataset,
        n_calibration=flag.n_calibration,
    )
    attacks = [r.attack for r in flag.rates if r.attack != CLEAN]
    note = f"converted from a schema-2 `flag` section (anchor_score < {flag.anchor_below:.4f}): the same decisions"
    return AttackScoreCalibration(
        config=AttackScoreConfig(signals=("anchor",)),
        params=params,
        attack=attacks[0] if attacks else CLEAN,
        rates=flag.rates,
        notes=(*flag.notes, note),
    )


class BaseModelInfo(StrictModel):
    """What a fine-tuning run started from: the `--model` spelling and the image tower's digest."""

    model: str
    pretrained: Optional[str] = None
    weights: Optional[str] = None
    record: str
    weights_digest: str


class TrainingData(StrictModel):
    """The fine-tuning data: name, size, prompt, and the preprocessing preset and definition it went through."""

    name: str
    images: int = Field(ge=0)
    classes: int = Field(ge=0)
    template: str
    preprocess_preset: Optional[str] = None
    preprocess: Optional[dict[str, Any]] = None


class AttackSpec(StrictModel):
    """An attack as run: kind, norm, eps and step size in [0, 1] pixel units, steps, restarts."""

    kind: str
    norm: str = "linf"
    eps: float
    alpha: Optional[float] = None
    steps: int
    restarts: int = 1
    label: str


class TrainingInfo(StrictModel):
    """How the weights were fine-tuned, with the values that actually ran (not the config defaults).

    `image_size` is the model's input resolution, `steps` the optimiser steps taken, `batch_size` the
    largest batch that ran (the requested one, or every image when the data set is smaller),
    `images_seen` the training images the steps used in all, `epochs` = images seen / training images.
    """

    method: str
    method_description: str
    image_size: int = Field(gt=0)
    steps: int = Field(ge=0)
    epochs: float = Field(ge=0)
    batch_size: int = Field(gt=0)
    images_seen: Optional[int] = Field(default=None, ge=0, description="images the steps used (cards before issue 27: absent)")
    requested_batch_size: Optional[int] = Field(default=None, gt=0, description="the configured batch size, when it differs")
    hyperparameters: dict[str, Any]
    data: TrainingData
    training_attack: AttackSpec
    eval_attack: Optional[AttackSpec] = None
    train_seconds: float = Field(ge=0)


class Provenance(StrictModel):
    """Which code wrote the card, and when."""

    clipshield_version: str
    git_commit: str
    date: str


class ReleaseDecision(StrictModel):
    """The robustness gate's verdict on this model against the one it replaces (`clipshield release`)."""

    baseline: str = Field(description="name, version and weights digest of the model it was compared with")
    accepted: bool
    forced: bool = False
    reason: str = ""
    max_clean_drop: float
    max_robust_drop: float
    compared: int = Field(ge=0, description="accuracy entries measured under the same protocol by both cards")
    date: str


class ModelCard(StrictModel):
    """The model card: identity, training (fine-tuned weights only), measured numbers, serving defaults."""

    schema_version: int = SCHEMA_VERSION
    source: Literal["finetune", "export"]
    name: str
    version: str = ""
    description: str = ""
    embed_dim: int
    image_size: int
    logit_scale: float
    weights_digest: str
    base_model: Optional[BaseModelInfo] = None
    training: Optional[TrainingInfo] = None
    accuracy: tuple[AccuracyEntry, ...] = ()
    purify: PurifyDefaults = PurifyDefaults()
    purify_sweep: Optional[PurifySweep] = None
    attack_score: Optional[AttackScoreCalibration] = None
    parity: Optional[ParityReport] = None
    precision: PrecisionInfo = PrecisionInfo()  # the served image encoder's number format (issue 26)
    provenance: Provenance
    finetune_provenance: Optional[Provenance] = None
    release: Optional[ReleaseDecision] = None
    notes: tuple[str, ...] = ()
    labels_source: str = Field(default="", description="where the bundle's default labels came from (export; issue 27)")

    @model_validator(mode="before")
    @classmethod
    def _one_detector(cls, data: Any) -> Any:
        """A schema <= 2 card's `flag` section becomes the equivalent one-signal `attack_score`; when the card also
        has an attack score, that richer score is kept as the one detector and a note says the flag was dropped."""
        if not isinstance(data, dict) or "flag" not in data:
            return data
        data = dict(data)
        flag = data.pop("flag")
        if flag is None:
            return data
        legacy = LegacyFlagCalibration.model_validate(flag)
        if data.get("attack_score") is None:
            data["attack_score"] = score_from_legacy_flag(legacy)
        else:
            note = f"the schema-2 anchor flag (anchor_score < {legacy.anchor_below:.4f}) was dropped: the attack score is the one detector"
            data["notes"] = (*data.get("notes", ()), note)
        data["schema_version"] = SCHEMA_VERSION
        return data

    @model_validator(mode="after")
    def _one_accuracy_per_gauge(self) -> ModelCard:
        """Each (dataset, attack, purified) at most once: it is one `clipshield_model_accuracy` sample."""
        keys = [accuracy_key(e) for e in self.accuracy]
        dupes = sorted({k for k in keys if keys.count(k) > 1})
        if dupes:
            raise ValueError(f"accuracy entries repeat (dataset, attack, purified) {dupes}: each is one gauge sample")
        return self


def accuracy_key(entry: AccuracyEntry) -> tuple[str, str, bool]:
    """The gauge identity of an accuracy entry: (dataset, attack, purified)."""
    return (entry.dataset, entry.attack, entry.purified)


def read_card_file(path: Path) -> ModelCard:
    """Parse a `model_card.json` (pydantic validation error on a malformed or outdated card)."""
    return ModelCard.model_validate_json(Path(path).read_text())


def write_card_file(path: Path, card: ModelCard) -> Path:
    """Write `card` as indented JSON to `path`."""
    path = Path(path)
    path.write_text(card.model_dump_json(indent=2) + "\n")
    return path


def gauge_samples(card: ModelCard) -> list[tuple[float, dict[str, str]]]:
    """(value, labels) of each `clipshield_model_accuracy` sample the card's accuracies give."""
    return [(e.value, {"dataset": e.dataset, "attack": e.attack, "purified": str(e.purified).lower()}) for e in card.accuracy]


def current_provenance() -> Provenance:
    """Provenance of a card written now: installed clipshield version, source git commit, UTC date."""
    import datetime as dt

    from clipshield.service.provenance import git_commit, package_version

    date = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    return Provenance(clipshield_version=package_version(), git_commit=git_commit(), date=date)
