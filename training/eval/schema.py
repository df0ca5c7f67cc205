"""Versioned JSON records of an evaluation: one file per cell, plus a summary.

A cell is one (model, data set, attack, eps, steps, seed, purification, limit) combination; its
file name is derived from a hash of that key, so a re-run finds finished cells and skips them.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Optional

from pydantic import Field, ValidationError

from service.config import StrictModel
from service.errors import ConfigError
from training.attacks.adaptive import AdaptiveReport

SCHEMA_VERSION = 1
CLEAN = "none"  # attack name of a clean-only cell


class CellKey(StrictModel):
    """Identity of one evaluation cell; equal keys mean the same numbers (deterministic given the seed)."""

    model_id: str
    dataset: str
    attack: str
    eps: float
    steps: int
    alpha: Optional[float] = None
    restarts: int = 1
    seed: int
    purification: bool
    limit: Optional[int] = None
    data_options: dict[str, str] = {}

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
    n: int = Field(ge=0)
    clean: float
    robust: Optional[float] = None
    adaptive: Optional[AdaptiveReport] = None
    protocol: dict[str, str] = Field(default_factory=dict, description="data set protocol (split, transform) when known")
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


def read_cell(path: Path) -> CellResult:
    try:
        return CellResult.model_validate_json(Path(path).read_text())
    except ValidationError as exc:
        raise ConfigError(f"{path}: not a clipshield evaluation cell (schema {SCHEMA_VERSION}): {exc.errors()[0]['msg']}") from exc


def load_finished(out_dir: Path, key: CellKey) -> Optional[CellResult]:
    """The stored result of `key`, or None when the cell has not been computed."""
    path = cell_path(out_dir, key)
    if not path.is_file():
        return None
    result = read_cell(path)
    return result if result.key == key and result.schema_version == SCHEMA_VERSION else None


def load_all(out_dir: Path) -> list[CellResult]:
    """Every cell stored under `out_dir/cells`, sorted by file name."""
    folder = Path(out_dir) / "cells"
    return [read_cell(p) for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []
