"""The fine-tuned model's card (`clipshield.service.card.ModelCard`, source "finetune") and its evaluation.

Written next to the final checkpoint by `clipshield.training.finetune`. `clipshield export --model <final>` reads
it (`read_finetune_card`) and builds the bundle's own card from it (`clipshield.export.exporter.bundle_card`):
its accuracies, base model, training settings and provenance, with export's measurements replacing
equal entries; so what was measured here is what the server reports.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from pydantic import ValidationError

from clipshield.models.checkpoint import weights_digest
from clipshield.models.pixel_model import PixelCLIP
from clipshield.service.card import (
    CLEAN,
    SCHEMA_VERSION,
    AccuracyEntry,
    AttackSpec,
    BaseModelInfo,
    ModelCard,
    TrainingData,
    TrainingInfo,
    attack_label,
    current_provenance,
    read_card_file,
)
from clipshield.service.config import ModelRecord, PreprocessConfig
from clipshield.service.errors import ConfigError
from clipshield.training.methods import get_method

if TYPE_CHECKING:
    from clipshield.training.finetune_config import FinetuneConfig

MODEL_CARD = "model_card.json"
# Flat keys of the resolved FinetuneConfig that are not hyper-parameters, or are recorded as measured values.
_NOT_HYPERPARAMETERS = ("output", "resume", "threads", "workers", "image_size", "epochs", "steps", "batch_size")


def preprocessing(pre: PreprocessConfig) -> str:
    """How images reach the encoder, in words (for accuracy entries): the one preprocessing definition."""
    return f"[0,1] pixels: {pre.describe()}; normalised inside the model (mean {pre.mean}, std {pre.std})"


def eval_attack(cfg: FinetuneConfig) -> AttackSpec:
    """The evaluation attack of the card: PGD through `clipshield.evaluation.runner` (alpha eps/4, one restart)."""
    ev = cfg.evaluation
    eps = ev.eps or 0.0
    return AttackSpec(kind="pgd", eps=eps, alpha=eps / 4, steps=ev.steps, label=attack_label("pgd", eps, ev.steps))


def evaluate_model(cfg: FinetuneConfig, model: PixelCLIP) -> list[AccuracyEntry]:
    """Clean and PGD accuracy on `cfg.evaluation.datasets` through the evaluation harness (`clipshield.evaluation.runner`)."""
    ev = cfg.evaluation
    if not ev.datasets:
        return []
    from clipshield.evaluation.runner import EvalConfig, Evaluator

    ecfg = EvalConfig(
        model_id=f"{cfg.method}:{weights_digest(model.visual)}",
        datasets=list(ev.datasets),
        attacks=["pgd"],
        eps=ev.eps,
        steps=ev.steps,
        seed=cfg.run.seed,
        limit=ev.limit,
        batch_size=ev.batch_size,
        data_root=cfg.dataset.root,
        image_size=cfg.dataset.image_size,
        device=cfg.run.device,
        out_dir=cfg.run.output / "eval",
    )
    pre, robust = preprocessing(model.record.preprocess), eval_attack(cfg).label
    out = []
    for r in Evaluator(model, ecfg).run():
        out.append(AccuracyEntry(dataset=r.key.dataset, attack=CLEAN, purified=False, value=r.clean, n=r.n, preprocessing=pre))
        if r.robust is not None and robust != CLEAN:  # eps or steps 0: the "attack" is the clean number again
            out.append(AccuracyEntry(dataset=r.key.dataset, attack=robust, purified=False, value=r.robust, n=r.n, preprocessing=pre))
    return out


def training_info(cfg: FinetuneConfig, data: Any, template: str, seconds: float) -> TrainingInfo:
    """What ran: method, resolved hyper-parameters, the training images' size, steps and epochs taken."""
    method = get_method(cfg.method)
    image = data[0][0]
    # unset (None) values are left out: JSON nulls do not survive TorchServe's describe answer
    hyper = {k: v for k, v in cfg.flat().items() if k not in _NOT_HYPERPARAMETERS and v is not None}
    kind, a, steps, batch_size = method.adversary.kind, cfg.attack, cfg.optim.steps or 0, cfg.optim.batch_size or 0
    attack = AttackSpec(kind=kind, eps=a.eps, alpha=a.alpha, steps=a.steps or 0, label=attack_label(kind, a.eps, a.steps or 0))
    seen, n = images_seen(len(data), batch_size, steps), max(len(data), 1)
    return TrainingInfo(
        method=cfg.method,
        method_description=method.description,
        image_size=int(image.shape[-1]),
        steps=steps,
        epochs=round(seen / n, 4),
        batch_size=min(batch_size, n),
        images_seen=seen,
        requested_batch_size=batch_size if batch_size > n else None,
        hyperparameters=hyper,
        data=TrainingData(
            name=cfg.dataset.name,
            images=len(data),
            classes=len(data.classnames),
            template=template,
            preprocess_preset=data.protocol.get("preprocess"),
            preprocess=data.preprocess.model_dump(mode="json"),
        ),
        training_attack=attack,
        eval_attack=eval_attack(cfg) if cfg.evaluation.datasets else None,
        train_seconds=round(seconds, 2),
    )


def images_seen(n: int, batch_size: int, steps: int) -> int:
    """Training images `steps` steps use, as `clipshield.training.finetune.StepBatches` deals them: epochs of
    ceil(n / batch_size) batches, the last one partial, so a batch larger than the data set is the data set."""
    if n <= 0 or batch_size <= 0:
        return 0
    per_epoch = -(-n // batch_size)
    full, rest = divmod(steps, per_epoch)
    return full * n + min(rest * batch_size, n)


def embed_dim(model: PixelCLIP) -> int:
    """Width of the joint embedding (one text forward; works for every open_clip tower kind)."""
    import torch

    with torch.no_grad():
        return int(model.encode_text(model.tokenize([""]).to(next(model.parameters()).device)).shape[-1])


def model_card(
    cfg: FinetuneConfig,
    model: PixelCLIP,
    base_record: ModelRecord,
    base_digest: str,
    data: Any,
    template: str,
    results: list[AccuracyEntry],
    seconds: float,
) -> ModelCard:
    """The card of a fine-tuned model (`cfg` resolved; `base_digest`: image tower digest before training)."""
    return ModelCard(
        source="finetune",
        name=f"{base_record.name}+{cfg.method}",
        description=f"{cfg.method} fine-tuned from {cfg.source.model}",
        embed_dim=embed_dim(model),
        image_size=model.image_size,
        logit_scale=model.logit_scale,
        weights_digest=weights_digest(model.visual),
        base_model=BaseModelInfo(
            model=cfg.source.model,
            pretrained=cfg.source.pretrained,
            weights=cfg.source.weights,
            record=base_record.name,
            weights_digest=base_digest,
        ),
        training=training_info(cfg, data, template, seconds),
        accuracy=tuple(results),
        provenance=current_provenance(),
        notes=evaluation_notes(cfg),
    )


def evaluation_notes(cfg: FinetuneConfig) -> tuple[str, ...]:
    """What the card's own-data accuracies were measured on, when a `folder/<dir>` set has no held-out split."""
    from clipshield.datasets.folder import FOLDER_PREFIX, held_out_split

    notes = []
    for name in cfg.evaluation.datasets:
        if name.startswith(FOLDER_PREFIX) and cfg.dataset.root is not None:
            split = held_out_split(Path(cfg.dataset.root) / name[len(FOLDER_PREFIX) :])
            if split == "same" and name == cfg.dataset.name:
                notes.append(f"{name} has no test/ or val/ folder: its accuracies are on the training images, not held out")
    if cfg.dataset.name.startswith(FOLDER_PREFIX) and not cfg.evaluation.datasets:
        notes.append(f"{cfg.dataset.name} was not evaluated (no test/ or val/ folder and no --eval-datasets)")
    return tuple(notes)


def read_finetune_card(folder: Path) -> Optional[ModelCard]:
    """The card next to a fine-tuned checkpoint folder, or None when there is none.

    ConfigError for a card this version cannot read (e.g. one written before the typed card).
    """
    path = Path(folder) / MODEL_CARD
    if not path.is_file():
        return None
    try:
        return read_card_file(path)
    except ValidationError as exc:
        raise ConfigError(
            f"{path} is not a schema-{SCHEMA_VERSION} model card ({exc.error_count()} problems; written by an "
            "older clipshield?): re-run `clipshield finetune`, or move the file aside to export without it"
        ) from None


def results_by_dataset(card: ModelCard) -> dict[str, dict[str, Any]]:
    """{data set: {clean, robust, n}} of the card's un-purified accuracies (robust: the first attack, or None)."""
    out: dict[str, dict[str, Any]] = {}
    for e in card.accuracy:
        if e.purified:
            continue
        row = out.setdefault(e.dataset, {"clean": None, "robust": None, "n": e.n})
        key = "clean" if e.attack == CLEAN else "robust"
        if row[key] is None:
            row[key] = e.value
    return out
