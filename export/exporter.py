"""`export_model`: write a complete, verified serving bundle for a PixelCLIP.

Bundle layout and loading live in `clipshield.service.bundle`; this module produces it: both ONNX encoders,
the model record, the default label set with its precomputed zero-shot head, the CLIPure anchor
(blank-template embedding), the tokenizer's BPE vocabulary, the model card (with ONNX parity
numbers, the fine-tune card's provenance and results, and what export measured) and the sha256 manifest.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from clipshield.export.labels import DEFAULT_LABEL_DATASET, LabelChoice, labels_from_dataset, run_labels, run_version  # noqa: F401 (re-exported)
from clipshield.export.onnx_export import check_parity, export_image_encoder, export_text_encoder
from clipshield.export.precision_eval import PrecisionEvalConfig, choose_precision
from clipshield.models.checkpoint import weights_digest
from clipshield.models.pixel_model import PixelCLIP
from clipshield.models.purify import blank_anchor
from clipshield.models.zero_shot import build_text_head
from clipshield.service import bundle as B
from clipshield.service.bundle_info import FORMAT_VERSION, BundleInfo, current_build, write_bundle_info
from clipshield.service.card import ModelCard, accuracy_key, current_provenance
from clipshield.service.config import StrictModel
from clipshield.service.errors import ExportError
from clipshield.service.precision import PrecisionInfo
from clipshield.service.tokenizer import open_clip_vocab

log = logging.getLogger(__name__)


class ExportMeasurements(StrictModel):
    """What export measured or was told, for the card: purification default and sweep, the detector, accuracies."""

    purify: B.PurifyDefaults = B.PurifyDefaults()
    purify_sweep: Optional[B.PurifySweep] = None
    attack_score: Optional[B.AttackScoreCalibration] = None
    accuracy: tuple[B.AccuracyEntry, ...] = ()
    notes: tuple[str, ...] = ()
    precision: PrecisionInfo = PrecisionInfo()


def merge_accuracy(
    finetuned: Sequence[B.AccuracyEntry], measured: Sequence[B.AccuracyEntry]
) -> tuple[tuple[B.AccuracyEntry, ...], tuple[str, ...]]:
    """Fine-tune accuracies plus export's; where both measured the same gauge, export's (on the exported
    weights, just now) replaces the fine-tune one, and a note records both values."""
    mine = {accuracy_key(e): e for e in measured}
    notes = tuple(
        f"{e.dataset} {e.attack} (purified={str(e.purified).lower()}): {mine[accuracy_key(e)].value:.1%} "
        f"(n={mine[accuracy_key(e)].n}) measured at export replaces {e.value:.1%} (n={e.n}) from fine-tuning"
        for e in finetuned
        if accuracy_key(e) in mine
    )
    kept = tuple(e for e in finetuned if accuracy_key(e) not in mine)
    return (*kept, *measured), notes


def bundle_card(
    model: PixelCLIP,
    version: str,
    embed_dim: int,
    parity: B.ParityReport,
    measured: ExportMeasurements,
    finetune_card: Optional[ModelCard] = None,
    labels_source: str = "",
) -> ModelCard:
    """The bundle's card: the fine-tune card's provenance and results (when given) plus export's own.

    ExportError when `finetune_card` describes other weights than `model`'s (digest mismatch).
    """
    digest = weights_digest(model.visual)
    carried: dict = {}
    accuracy, notes = merge_accuracy(finetune_card.accuracy if finetune_card else (), measured.accuracy)
    if finetune_card is not None:
        if finetune_card.weights_digest != digest:
            raise ExportError(
                f"the model card describes image-tower weights {finetune_card.weights_digest}, "
                f"but the exported model's are {digest}: refusing to ship a card for other weights"
            )
        carried = {
            "base_model": finetune_card.base_model,
            "training": finetune_card.training,
            "finetune_provenance": finetune_card.provenance,
            "description": finetune_card.description,
        }
    return ModelCard(
        source="export",
        name=model.record.name,
        version=version,
        description=carried.pop("description", model.record.description),
        embed_dim=embed_dim,
        image_size=model.image_size,
        logit_scale=model.logit_scale,
        weights_digest=digest,
        accuracy=accuracy,
        purify=measured.purify,
        purify_sweep=measured.purify_sweep,
        attack_score=measured.attack_score,
        parity=parity,
        precision=measured.precision,
        provenance=current_provenance(),
        notes=(*measured.notes, *notes),
        labels_source=labels_source,
        **carried,
    )


@torch.no_grad()
def export_model(
    model: PixelCLIP,
    out_dir: Path,
    labels: Optional[B.LabelSet | LabelChoice] = None,
    version: Optional[str] = None,
    measured: Optional[ExportMeasurements] = None,
    finetune_card: Optional[ModelCard] = None,
    precision: str = "fp32",
    precision_eval: Optional[PrecisionEvalConfig] = None,
    force_precision: bool = False,
) -> Path:
    """Export `model` into `out_dir` (created) and return it; raises ExportError on a parity failure.

    `labels` defaults to the fine-tuning data's class names and prompt (`finetune_card`), else the mini
    world's colour+shape set; `version` to the run's (`clipshield.export.labels.run_version`); `measured` holds what export
    measured (purification sweep, the detector's calibration); `finetune_card` (a fine-tuned checkpoint's
    card) carries training provenance and accuracies into the bundle card.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model.eval().float().cpu()
    if isinstance(labels, LabelChoice):
        choice = labels
    else:
        choice = run_labels(finetune_card) if labels is None else LabelChoice(labels=labels, source="given by the caller")
    labels = choice.labels
    version = version or run_version(weights_digest(model.visual), finetune_card)
    export_image_encoder(model, out_dir / B.IMAGE_ONNX)
    export_text_encoder(model, out_dir / B.TEXT_ONNX)
    prompts = [t.format(c) for c in labels.classnames[:4] for t in labels.templates[:2]] + [t.format("") for t in labels.templates[:2]]
    parity = check_parity(model, out_dir, prompts)
    measured = measured or ExportMeasurements()
    if precision != "fp32":
        info = choose_precision(model, out_dir, precision, precision_eval, force_precision)
        measured = measured.model_copy(update={"precision": info})

    head = build_text_head(model, list(labels.classnames), list(labels.templates)).numpy().astype(np.float32)
    anchor = blank_anchor(model, list(labels.templates)).numpy().astype(np.float32)
    np.save(out_dir / B.TEXT_HEAD, head)
    np.save(out_dir / B.ANCHOR, anchor)
    (out_dir / B.RECORD).write_text(model.record.model_dump_json(indent=2) + "\n")
    (out_dir / B.LABELS).write_text(labels.model_dump_json(indent=2) + "\n")
    shutil.copyfile(open_clip_vocab(), out_dir / B.TOKENIZER_VOCAB)
    card = bundle_card(model, version, int(head.shape[1]), parity, measured, finetune_card, choice.source)
    B.write_card(out_dir, card)
    write_bundle_info(out_dir, BundleInfo(format_version=FORMAT_VERSION, exported_by=current_build()))
    B.write_manifest(out_dir)
    log.info("exported %s %s to %s (%d accuracies on the card)", card.name, version, out_dir, len(card.accuracy))
    return out_dir
