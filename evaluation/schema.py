"""Versioned JSON records of an evaluation: one file per cell, plus a summary.

A cell is keyed by everything that determines its numbers: the weights (digest, not the display
name), the data set's resolved preprocessing, the full purification settings, the attack settings,
the data set, split, limit and options, and the seed. Its file name is derived from a hash of that
key, so a re-run finds finished cells and skips them; cells of another schema version are never
reused (schema 1 keyed by the model's display name and a purification on/off flag).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path
from typing import Optional

from pydantic import Field, ValidationError

from clipshield.attacks.adaptive import AdaptiveReport
from clipshield.models.purify import PurifyConfig
from clipshield.service.config import PreprocessConfig, StrictModel
from clipshield.service.errors import ConfigError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 3  # 3: stop rule and precisions in the key, per-batch attack seeds
CLEAN = "none"  # attack name of a clean-only cell


class CellKey(StrictModel):
    """Identity of one evaluation cell; equal keys mean the same numbers (deterministic given the seed).

    `weights` is `clipshield.models.checkpoint.weights_digest` of the evaluated model; the model's display
    name lives in `CellResult.model_id` and is not part of the identity. `preprocess` is the data
    set's resolved preprocessing (size, resize mode and ratio, interpolation, antialias, mean/std).
    """

    weights: str
    dataset: str
    split: str = "test"
    preprocess: PreprocessConfig
    attack: str
    eps: float
    steps: int
    alpha: Optional[float] = None
    restarts: int = 1
    seed: int
    purification: Optional[PurifyConfig] = None
    limit: Optional[int] = None
    data_options: dict[str, str] = Field(default_factory=dict)
    stop: str = Field(default="final", description="attack stopping protocol: early (worst case over iterates) or final iterate")
    precision: str = Field(default="fp32", description="precision of the evaluation forward passes")
    attack_precision: str = Field(default="fp32", description="precision of the attack's forward and backward passes")

    def digest(self) -> str:
        """Stable 16-hex-digit hash of the key (file names, per-cell random seeds)."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]

    def filename(self) -> str:
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{self.dataset}-{self.attack}")[:80]
        return f"{slug}-{self.digest()}.json"


class CellResult(StrictModel):
    """Clean and robust top-1 of one cell. With purification, `robust` is the adaptive worst case."""

    schema_version: int = SCHEMA_VERSION
    key: CellKey
    model_id: str = Field(description="display name of the model (reports); the identity is key.weights")
    n: int = Field(ge=0)
    clean: float
    robust: Optional[float] = None
    adaptive: Optional[AdaptiveReport] = None
    protocol: dict[str, str] = Field(default_factory=dict, description="data set protocol (split, preprocessing preset and description)")
    seconds: float = 0.0


class Summary(StrictModel):
    """All cells of an output folder plus per-(model, purification, attack) averages over data sets."""

    schema_version: int = SCHEMA_VERSION
    cells: list[CellResult]
    averages: dict[str, dict[str, float]]


def cell_path(out_dir: Path, key: CellKey) -> Path:
    return Path(out_dir) / "cells" / key.filename()


def write_cell(out_dir: Path, result: CellResult) -> Path:
    """Write a cell atomically (temp file + rename), so an interrupted run never leaves half a file."""
    path = cell_path(out_dir, result.key)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(result.model_dump_json(indent=2))
    tmp.replace(path)
    return path


def _schema_version(path: Path) -> Optional[int]:
    """The `schema_version` a stored cell declares (None when unreadable as a JSON object)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data.get("schema_version") if isinstance(data, dict) else None


def read_cell(path: Path) -> CellResult:
    """Parse one stored cell; ConfigError naming the file when it is not a current-schema cell."""
    version = _schema_version(path)
    if version != SCHEMA_VERSION:
        raise ConfigError(
            f"{path}: evaluation cell of schema {version}, this clipshield reads schema {SCHEMA_VERSION}; "
            "re-run the evaluation (old cells are never reused)"
        )
    try:
        return CellResult.model_validate_json(Path(path).read_text())
    except ValidationError as exc:
        raise ConfigError(f"{path}: not a clipshield evaluation cell (schema {SCHEMA_VERSION}): {exc.errors()[0]['msg']}") from exc


def load_finished(out_dir: Path, key: CellKey) -> Optional[CellResult]:
    """The stored result of `key`, or None when the cell has not been computed (or is stale)."""
    path = cell_path(out_dir, key)
    if not path.is_file():
        return None
    if _schema_version(path) != SCHEMA_VERSION:
        log.warning("%s is a stale cell (schema %s, current %d): recomputing it", path, _schema_version(path), SCHEMA_VERSION)
        return None
    result = read_cell(path)
    return result if result.key == key else None


def load_all(out_dir: Path) -> list[CellResult]:
    """Every current-schema cell stored under `out_dir/cells`, sorted by file name.

    Cells of another schema version are left out with one warning naming how many (never mixed in).
    """
    folder = Path(out_dir) / "cells"
    paths = sorted(folder.glob("*.json")) if folder.is_dir() else []
    stale = [p for p in paths if _schema_version(p) != SCHEMA_VERSION]
    if stale:
        log.warning(
            "%d cell(s) in %s are from another schema version and are left out of the reports (e.g. %s)", len(stale), folder, stale[0].name
        )
    return [read_cell(p) for p in paths if p not in stale]
