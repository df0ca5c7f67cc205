"""What a model serves and was trained on, for `clipshield describe`: default labels, templates, vocabulary, card.

Reads an export bundle (folder), a TorchServe archive (`.mar`, or its `--format no-archive` folder),
a fine-tuned checkpoint folder (`runs/finetune/<run>/final`) or a shipped model name (`miniworld`).
Bundles and archives are read without torch; a checkpoint's default labels are the ones `clipshield
export` would give it (`clipshield.export.labels.run_labels`). Every unreadable path is one
`ConfigError` line naming what was expected (`require_bundle` is shared with `clipshield archive`).
"""

from __future__ import annotations

import json
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Optional

from pydantic import ValidationError

from clipshield.service import bundle as B
from clipshield.service.card import ModelCard
from clipshield.service.config import ModelRecord
from clipshield.service.errors import ClipshieldError, ConfigError
from clipshield.service.tokenizer import create_tokenizer

CHECKPOINT_CARD = "model_card.json"


def require_bundle(folder: Path) -> ModelCard:
    """The card of an export bundle after checking the folder is one (manifest checksums included).

    ConfigError, one line, for a missing path, a file, a folder that is not a bundle or a malformed card.
    """
    folder = Path(folder)
    hint = "give the folder `clipshield export --out` wrote"
    if not folder.exists():
        raise ConfigError(f"no export at {folder}: {hint} (run `clipshield export --out {folder}` first)")
    if not folder.is_dir():
        raise ConfigError(f"{folder} is a file, not an export folder: {hint}")
    if not (folder / B.MANIFEST).is_file():
        raise ConfigError(f"{folder} is not an export bundle (no {B.MANIFEST}): {hint}")
    try:
        B.verify_manifest(folder)
        return B.read_card(folder)
    except ClipshieldError as exc:
        raise ConfigError(f"export {folder} cannot be used: {exc}") from None
    except (ValidationError, ValueError, KeyError, OSError) as exc:
        raise ConfigError(f"export {folder} is malformed ({type(exc).__name__}): re-export it") from None


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path} is unreadable or not JSON ({type(exc).__name__})") from None


def _vocabulary(record: ModelRecord, vocab: Optional[Path]) -> list[str]:
    """The words the text tower reads (empty: any text, an open BPE vocabulary)."""
    return create_tokenizer(record.tokenizer, vocab).known_words()


def _from_bundle(folder: Path) -> dict[str, Any]:
    card = require_bundle(folder)
    labels = B.LabelSet.model_validate(_json(folder / B.LABELS))
    record = ModelRecord.model_validate(_json(folder / B.RECORD))
    return _answer(str(folder), "bundle", card, labels, record, _vocabulary(record, B.vocab_file(folder)))


def _from_archive(path: Path) -> dict[str, Any]:
    """A `.mar`: its bundle files are read from a temporary extraction (the archive keeps the bundle layout)."""
    try:
        with zipfile.ZipFile(path) as archive, tempfile.TemporaryDirectory() as tmp:
            archive.extractall(tmp)
            cards = sorted(Path(tmp).rglob(B.MANIFEST))
            if not cards:
                raise ConfigError(f"{path} holds no export bundle ({B.MANIFEST} missing)")
            answer = _from_bundle(cards[0].parent)
    except zipfile.BadZipFile:
        raise ConfigError(f"{path} is not a TorchServe archive (not a zip file)") from None
    return answer | {"path": str(path), "kind": "archive"}


def _from_checkpoint(name: str) -> dict[str, Any]:
    """A fine-tuned checkpoint folder or a shipped model: what `clipshield export` would serve by default."""
    from clipshield.export.labels import run_labels
    from clipshield.models.factory import load_model
    from clipshield.training.model_card import read_finetune_card

    folder = Path(name)
    card = read_finetune_card(folder) if folder.is_dir() else None
    model = load_model(name)
    labels = run_labels(card)
    return _answer(name, "checkpoint", card, labels.labels, model.record, _model_vocabulary(model)) | {"labels_source": labels.source}


def _model_vocabulary(model: Any) -> list[str]:
    from clipshield.service.tokenizer import open_clip_vocab

    return _vocabulary(model.record, open_clip_vocab())


def _answer(
    path: str, kind: str, card: Optional[ModelCard], labels: B.LabelSet, record: ModelRecord, vocabulary: list[str]
) -> dict[str, Any]:
    """The description, JSON-able: the same keys as the `labels` / `vocabulary` parts of the describe API."""
    training = card.training if card is not None else None
    return {
        "path": path,
        "kind": kind,
        "model": {"name": card.name if card else record.name, "version": card.version if card else "", "description": record.description},
        "labels": {"classnames": list(labels.classnames), "templates": list(labels.templates)},
        "labels_source": card.labels_source if card is not None else "",
        "vocabulary": vocabulary,
        "image_size": card.image_size if card else None,
        "precision": card.precision.served if card is not None and card.source == "export" else None,
        "trained_on": training.data.model_dump(mode="json") if training is not None else None,
        "card": card.model_dump(mode="json", exclude_none=True) if card is not None else None,
    }


def describe(path: str) -> dict[str, Any]:
    """Describe a bundle folder, a `.mar` (or no-archive folder), a fine-tuned checkpoint or a shipped model name."""
    p = Path(path)
    if p.is_file() and p.suffix == ".mar":
        return _from_archive(p)
    if p.is_dir() and (p / B.MANIFEST).is_file():
        return _from_bundle(p)
    if p.is_dir() and any(p.rglob(B.MANIFEST)) and not (p / CHECKPOINT_CARD).is_file():
        return _from_bundle(sorted(p.rglob(B.MANIFEST))[0].parent)  # an archive's no-archive folder
    if not p.exists() and ("/" in path or p.suffix):
        raise ConfigError(
            f"no model at {path}: give an export folder, a .mar archive, a fine-tuned checkpoint folder or a shipped model name"
        )
    return _from_checkpoint(path)
