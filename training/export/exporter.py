"""`export_model`: write a complete, verified serving bundle for a PixelCLIP.

Bundle layout and loading live in `service.bundle`; this module produces it: both ONNX encoders,
the model record, the default label set with its precomputed zero-shot head, the CLIPure anchor
(blank-template embedding), the tokenizer's BPE vocabulary, the model card (with ONNX parity
numbers and any measured accuracy) and the sha256 manifest.
"""
from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from service import bundle as B
from service.bundle_info import FORMAT_VERSION, BundleInfo, current_build, write_bundle_info
from service.pixel_model import PixelCLIP
from service.purify import blank_anchor
from service.zero_shot import build_text_head

from .onnx_export import check_parity, export_image_encoder, export_text_encoder

log = logging.getLogger(__name__)

DEFAULT_LABEL_DATASET = "miniworld/plain/color_shape/seen"


def labels_from_dataset(name: str = DEFAULT_LABEL_DATASET) -> B.LabelSet:
    """Label set (class names + templates) of a registered data set, e.g. the mini world's 64 classes."""
    from training.data.registry import DatasetRequest, build_dataset

    ds = build_dataset(name, DatasetRequest(limit=1))
    return B.LabelSet(classnames=tuple(ds.classnames), templates=tuple(ds.templates))


@torch.no_grad()
def export_model(
    model: PixelCLIP,
    out_dir: Path,
    labels: Optional[B.LabelSet] = None,
    version: str = "1.0",
    purify: Optional[B.PurifyDefaults] = None,
    accuracy: Sequence[B.AccuracyEntry] = (),
    notes: Sequence[str] = (),
    purify_sweep: Sequence[B.PurifyMeasurement] = (),
    flag: Optional[B.FlagCalibration] = None,
) -> Path:
    """Export `model` into `out_dir` (created) and return it; raises ExportError on a parity failure.

    `labels` defaults to the mini world's colour+shape label set; `flag` is the calibrated
    adversarial-input flag (`training.export.flag_calibration.calibrate_flag`), off when None.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model.eval().float().cpu()
    labels = labels or labels_from_dataset()
    export_image_encoder(model, out_dir / B.IMAGE_ONNX)
    export_text_encoder(model, out_dir / B.TEXT_ONNX)
    prompts = [t.format(c) for c in labels.classnames[:4] for t in labels.templates[:2]] + [t.format("") for t in labels.templates[:2]]
    parity = check_parity(model, out_dir, prompts)

    head = build_text_head(model, list(labels.classnames), list(labels.templates)).numpy().astype(np.float32)
    anchor = blank_anchor(model, list(labels.templates)).numpy().astype(np.float32)
    np.save(out_dir / B.TEXT_HEAD, head)
    np.save(out_dir / B.ANCHOR, anchor)
    (out_dir / B.RECORD).write_text(model.record.model_dump_json(indent=2) + "\n")
    (out_dir / B.LABELS).write_text(labels.model_dump_json(indent=2) + "\n")
    shutil.copyfile(B.runtime_vocab(), out_dir / B.TOKENIZER_VOCAB)
    card = B.ModelCard(
        name=model.record.name,
        version=version,
        description=model.record.description,
        embed_dim=int(head.shape[1]),
        image_size=model.image_size,
        logit_scale=model.logit_scale,
        purify=purify or B.PurifyDefaults(),
        parity=parity,
        accuracy=tuple(accuracy),
        purify_sweep=tuple(purify_sweep),
        flag=flag,
        notes=tuple(notes),
    )
    B.write_card(out_dir, card)
    write_bundle_info(out_dir, BundleInfo(format_version=FORMAT_VERSION, exported_by=current_build()))
    B.write_manifest(out_dir)
    log.info("exported %s %s to %s", card.name, version, out_dir)
    return out_dir
