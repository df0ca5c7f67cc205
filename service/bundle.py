"""The exported model bundle: file names, model card, sha256 manifest, verified loading.

An export folder (and the TorchServe archive built from it) holds:
`image_encoder.onnx`, `text_encoder.onnx` (weights embedded; `*.onnx.data` beside them for models
over 2 GB), `record.json` (ModelRecord, tokenizer config inside), `labels.json` (default label set
and templates), `text_head.npy` [C, E] and `anchor.npy` [E] (precomputed, float32),
`model_card.json`, the tokenizer's BPE vocabulary, and `clipshield_manifest.json` (sha256 of every
other file). Loading verifies every checksum and refuses a bundle with a missing or modified file,
and one whose BPE vocabulary differs from the one the serving tokenizer would use.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from pydantic import Field

# The model card lives in `service.card` (one type from fine-tuning to serving); re-exported here.
from .card import (  # noqa: F401
    CLEAN, AccuracyEntry, AttackScoreCalibration, FlagCalibration, FlagRate, ModelCard, ParityReport, PurifyDefaults, PurifyMeasurement,
    PurifySweep, attack_label, read_card_file, write_card_file,
)
from .config import StrictModel
from .errors import ModelLoadError

log = logging.getLogger(__name__)

IMAGE_ONNX = "image_encoder.onnx"
TEXT_ONNX = "text_encoder.onnx"
RECORD = "record.json"
LABELS = "labels.json"
TEXT_HEAD = "text_head.npy"
ANCHOR = "anchor.npy"
MODEL_CARD = "model_card.json"
MANIFEST = "clipshield_manifest.json"
TOKENIZER_VOCAB = "bpe_simple_vocab_16e6.txt.gz"


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


def runtime_vocab() -> Path:
    """The BPE vocabulary file the installed tokenizer (open_clip's) reads."""
    from open_clip.tokenizer import default_bpe

    return Path(default_bpe())


def check_vocab(folder: Path) -> None:
    """ModelLoadError when the bundle's BPE vocabulary differs from the runtime tokenizer's."""
    shipped = folder / TOKENIZER_VOCAB
    if shipped.is_file() and sha256_file(shipped) != sha256_file(runtime_vocab()):
        log.error("refusing to load %s: its BPE vocabulary differs from the installed tokenizer's (%s)", folder, runtime_vocab())
        raise ModelLoadError("the bundle's tokenizer vocabulary differs from the installed open_clip's; labels would tokenize differently")


def read_card(folder: Path) -> ModelCard:
    """The bundle's model card (`service.card.ModelCard`)."""
    return read_card_file(folder / MODEL_CARD)


def write_card(folder: Path, card: ModelCard) -> Path:
    """Write the bundle's model card."""
    return write_card_file(folder / MODEL_CARD, card)
