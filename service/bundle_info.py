"""Which clipshield built a bundle, and whether this one can read it (`bundle_info.json`).

`clipshield export` writes the record (bundle format version, clipshield version and git commit of
the exporter); `clipshield archive` adds its own build and keeps the export's. The serving core
reads it before anything else and refuses a bundle whose format it cannot read, with one log line
naming both versions, so an image never half-loads a bundle written for another layout. The file
is listed in the sha256 manifest like every other bundle file. Kept apart from the model card:
the card describes the model, this record describes the files.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

from clipshield.service.config import StrictModel
from clipshield.service.errors import ModelLoadError
from clipshield.service.provenance import git_commit, package_version

log = logging.getLogger(__name__)

BUNDLE_INFO = "bundle_info.json"
# Bump when the bundle layout changes in a way an older server cannot read; list what this code reads.
# 2 (issue 24): one detector. `flagged` is the model card's `attack_score` decision; a format-1 card's `flag`
# section is converted on reading (`clipshield.service.card.ModelCard._one_detector`), while a format-1 server
# refuses a format-2 bundle instead of serving `flagged` without its detector.
FORMAT_VERSION = 2
READABLE_FORMATS: tuple[int, ...] = (1, 2)


class BuildInfo(StrictModel):
    """The clipshield that wrote a bundle step (`clipshield.service.provenance`)."""

    clipshield_version: str
    git_commit: str


class BundleInfo(StrictModel):
    """Bundle format version and the builds that exported and archived it."""

    format_version: int
    exported_by: BuildInfo
    archived_by: Optional[BuildInfo] = None


def current_build() -> BuildInfo:
    """This installation's clipshield version and git commit."""
    return BuildInfo(clipshield_version=package_version(), git_commit=git_commit())


def write_bundle_info(folder: Path, info: BundleInfo) -> Path:
    """Write `bundle_info.json` into `folder` (before the manifest, which must list it)."""
    path = Path(folder) / BUNDLE_INFO
    path.write_text(info.model_dump_json(indent=2) + "\n")
    return path


def _refuse(folder: Path, reason: str) -> ModelLoadError:
    log.error("refusing to load %s: %s", folder, reason)
    return ModelLoadError(reason)


def read_bundle_info(folder: Path) -> BundleInfo:
    """The bundle's record; ModelLoadError (and one error log line) when absent or of an unreadable format.

    The format version is checked before the rest is validated, so a newer layout is reported as
    such rather than as a schema error.
    """
    folder = Path(folder)
    path = folder / BUNDLE_INFO
    if not path.is_file():
        raise _refuse(
            folder,
            f"{BUNDLE_INFO} is missing: the bundle predates versioned bundles; "
            "rebuild it with `clipshield export` and `clipshield archive`",
        )
    try:
        raw = json.loads(path.read_text())
        version = raw["format_version"]
    except (ValueError, KeyError, TypeError) as exc:
        raise _refuse(folder, f"{BUNDLE_INFO} has no readable format_version ({type(exc).__name__})") from None
    if version not in READABLE_FORMATS:
        built = raw.get("exported_by") if isinstance(raw.get("exported_by"), dict) else {}
        raise _refuse(
            folder,
            (
                f"bundle format {version!r} (exported by clipshield {built.get('clipshield_version', 'unknown')}, "
                f"commit {built.get('git_commit', 'unknown')}) cannot be read by this clipshield "
                f"{package_version()}, which reads formats {list(READABLE_FORMATS)}; "
                "rebuild the bundle with this version or serve it with the version that built it"
            ),
        )
    return BundleInfo.model_validate(raw)
