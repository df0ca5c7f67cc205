"""Read what an archive in the model store holds without starting TorchServe: its bundle record and model card.

`clipshield serve` (through `start_server`) refuses an archive whose bundle format this clipshield
cannot read before launching anything, and checks after start that the server answers with the
archive's model name and version. Works on `.mar` files (zip) and `no-archive` folders alike.
"""

from __future__ import annotations

import shutil
import tempfile
import zipfile
from pathlib import Path

from clipshield.service import bundle as B
from clipshield.service.bundle_info import BUNDLE_INFO, BundleInfo, read_bundle_info
from clipshield.service.errors import ModelLoadError


def _extract(archive: Path, names: tuple[str, ...], into: Path) -> None:
    """Copy `names` (those present) from a .mar file or an archive folder into `into`."""
    if archive.is_dir():
        for name in names:
            if (archive / name).is_file():
                shutil.copyfile(archive / name, into / name)
        return
    if not archive.is_file():
        raise ModelLoadError(f"no archive at {archive}; run `clipshield archive` first")
    try:
        with zipfile.ZipFile(archive) as zf:
            present = set(zf.namelist())
            for name in names:
                if name in present:
                    (into / name).write_bytes(zf.read(name))
    except zipfile.BadZipFile as exc:
        raise ModelLoadError(f"{archive} is not a TorchServe archive (.mar zip): {exc}") from None


def archive_info(archive: Path) -> BundleInfo:
    """The archive's `bundle_info.json`; ModelLoadError when absent or of a format this clipshield cannot read."""
    with tempfile.TemporaryDirectory(prefix="clipshield-info-") as tmp:
        _extract(Path(archive), (BUNDLE_INFO,), Path(tmp))
        try:
            return read_bundle_info(Path(tmp))
        except ModelLoadError as exc:
            raise ModelLoadError(f"{archive}: {exc}") from None


def archive_card(archive: Path) -> B.ModelCard:
    """The archive's model card (name, version, ...)."""
    with tempfile.TemporaryDirectory(prefix="clipshield-card-") as tmp:
        _extract(Path(archive), (B.MODEL_CARD,), Path(tmp))
        if not (Path(tmp) / B.MODEL_CARD).is_file():
            raise ModelLoadError(f"{archive} has no {B.MODEL_CARD}")
        return B.read_card(Path(tmp))


def check_archives(model_store: Path, models: str) -> dict[str, BundleInfo]:
    """Bundle record of every archive in a TorchServe `load_models` value (`name=file,...`); refuses unreadable ones."""
    out = {}
    for entry in models.split(","):
        name, _, file = entry.partition("=")
        out[name.strip()] = archive_info(Path(model_store) / file.strip())
    return out
