"""The exported model bundle: file names, model card, sha256 manifest, verified loading.

An export folder (and the TorchServe archive built from it) holds:
`image_encoder.onnx`, `text_encoder.onnx` (weights embedded in each file, no external-data files:
see `clipshield.export.onnx_export`), `record.json` (ModelRecord, tokenizer config inside), `labels.json` (default label set
and templates), `text_head.npy` [C, E] and `anchor.npy` [E] (precomputed, float32),
`model_card.json`, the tokenizer's BPE vocabulary, and `clipshield_manifest.json` (sha256 of every
other file). Loading verifies every checksum and refuses a bundle with a missing or modified file,
and one whose BPE vocabulary is missing or not CLIP's (the server's tokenizer reads the bundle's copy).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from pydantic import Field

from clipshield.service.bpe import CLIP_VOCAB_SHA256, VOCAB_FILE

# The model card lives in `clipshield.service.card` (one type from fine-tuning to serving); re-exported here
# (`X as X`: an explicit re-export, which mypy's strict mode requires).
from clipshield.service.card import (
    CLEAN as CLEAN,
    AccuracyEntry as AccuracyEntry,
    AttackScoreCalibration as AttackScoreCalibration,
    FlagRate as FlagRate,
    ModelCard as ModelCard,
    ParityReport as ParityReport,
    PurifyDefaults as PurifyDefaults,
    PurifyMeasurement as PurifyMeasurement,
    PurifySweep as PurifySweep,
    attack_label as attack_label,
    read_card_file as read_card_file,
    write_card_file as write_card_file,
)
from clipshield.service.config import StrictModel
from clipshield.service.errors import ModelLoadError

log = logging.getLogger(__name__)

IMAGE_ONNX = "image_encoder.onnx"
TEXT_ONNX = "text_encoder.onnx"
RECORD = "record.json"
LABELS = "labels.json"
TEXT_HEAD = "text_head.npy"
ANCHOR = "anchor.npy"
MODEL_CARD = "model_card.json"
MANIFEST = "clipshield_manifest.json"
TOKENIZER_VOCAB = VOCAB_FILE


class LabelSet(StrictModel):
    """Default label set: class names and the prompt templates of its zero-shot head."""

    classnames: tuple[str, ...] = Field(min_length=1)
    templates: tuple[str, ...] = Field(min_length=1)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(folder: Path) -> Path:
    """Write `clipshield_manifest.json` listing sha256 of every file in `folder` (recursively)."""
    files = {
        p.relative_to(folder).as_posix(): sha256_file(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST and "MAR-INF" not in p.parts
    }
    path = folder / MANIFEST
    path.write_text(json.dumps({"algorithm": "sha256", "files": files}, indent=2) + "\n")
    return path


def verify_manifest(folder: Path) -> dict[str, str]:
    """Check every listed file against its sha256; ModelLoadError (and an error log line) on mismatch."""
    path = folder / MANIFEST
    if not path.is_file():
        log.error("refusing to load %s: %s is missing", folder, MANIFEST)
        raise ModelLoadError(f"{MANIFEST} missing from {folder}")
    files: dict[str, str] = json.loads(path.read_text())["files"]
    for name in (IMAGE_ONNX, TEXT_ONNX, RECORD, LABELS, TEXT_HEAD, ANCHOR, MODEL_CARD):
        if name not in files:
            log.error("refusing to load %s: manifest does not list %s", folder, name)
            raise ModelLoadError(f"manifest of {folder} does not list {name}")
    for name, expected in files.items():
        target = folder / name
        if not target.is_file():
            log.error("refusing to load %s: %s listed in the manifest is missing", folder, name)
            raise ModelLoadError(f"{name} is missing from {folder}")
        actual = sha256_file(target)
        if actual != expected:
            log.error("refusing to load %s: sha256 mismatch for %s (expected %s, got %s)", folder, name, expected, actual)
            raise ModelLoadError(f"sha256 mismatch for {name}: the bundle was modified or corrupted")
    return files


def vocab_file(folder: Path) -> Path:
    """The bundle's BPE vocabulary, which its tokenizer reads; ModelLoadError when the bundle has none."""
    path = folder / TOKENIZER_VOCAB
    if not path.is_file():
        log.error("refusing to load %s: %s is missing", folder, TOKENIZER_VOCAB)
        raise ModelLoadError(f"{TOKENIZER_VOCAB} (the tokenizer vocabulary) is missing from {folder}; re-export the bundle")
    return path


def check_vocab(folder: Path) -> None:
    """ModelLoadError when the bundle's BPE vocabulary is not CLIP's (every clipshield text tower reads CLIP's ids)."""
    digest = sha256_file(vocab_file(folder))
    if digest != CLIP_VOCAB_SHA256:
        log.error("refusing to load %s: its BPE vocabulary has sha256 %s, not CLIP's %s", folder, digest, CLIP_VOCAB_SHA256)
        raise ModelLoadError("the bundle's tokenizer vocabulary differs from CLIP's BPE vocabulary; labels would tokenize differently")


def read_card(folder: Path) -> ModelCard:
    """The bundle's model card (`clipshield.service.card.ModelCard`)."""
    return read_card_file(folder / MODEL_CARD)


def write_card(folder: Path, card: ModelCard) -> Path:
    """Write the bundle's model card."""
    return write_card_file(folder / MODEL_CARD, card)
