"""`build_archive`: a TorchServe model archive in `model_store/` from an export bundle.

The archive holds the export bundle (ONNX encoders, record with tokenizer config, default labels,
text head, anchor, model card), `serving.json` (a `ServingConfig`: threads, limits), the handler
and TorchServe's `model-config.yaml` (server-side batching, workers, timeout), plus a fresh
`clipshield_manifest.json` with the sha256 of every file, which the handler verifies at load.
Formats: `default` (.mar, deflated), `zip-store` (.mar, stored: fast for big models) or
`no-archive` (a folder: no packing and no unpacking at start-up).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Literal, Optional

from pydantic import Field

from clipshield.service import bundle as B
from clipshield.service.bundle_info import current_build, read_bundle_info, write_bundle_info
from clipshield.service.config import StrictModel
from clipshield.service.errors import ExportError
from clipshield.service.settings import ServingConfig

log = logging.getLogger(__name__)

ArchiveFormat = Literal["default", "zip-store", "no-archive"]
SERVING_JSON = "serving.json"
MODEL_CONFIG = "model-config.yaml"
HANDLER = Path(__file__).resolve().parent / "handler.py"
ARCHIVED_HANDLER = "clipshield_handler.py"


# The shipped server-side batching, chosen from the measured curves (docs/serving.md, "Batching by measurement").
DEFAULT_BATCH_SIZE = 16
DEFAULT_MAX_BATCH_DELAY_MS = 2


class BatchingConfig(StrictModel):
    """TorchServe per-model settings written to the archive's model-config.yaml."""

    batch_size: int = Field(default=DEFAULT_BATCH_SIZE, ge=1)
    max_batch_delay_ms: int = Field(default=DEFAULT_MAX_BATCH_DELAY_MS, ge=0)
    min_workers: int = Field(default=2, ge=1)
    max_workers: int = Field(default=2, ge=1)
    response_timeout_s: int = Field(default=60, ge=1)


def model_config_yaml(cfg: BatchingConfig) -> str:
    return (
        f"minWorkers: {cfg.min_workers}\nmaxWorkers: {cfg.max_workers}\nbatchSize: {cfg.batch_size}\n"
        f"maxBatchDelay: {cfg.max_batch_delay_ms}\nresponseTimeout: {cfg.response_timeout_s}\n"
    )


def _archiver() -> list[str]:
    exe = Path(sys.executable).parent / "torch-model-archiver"
    if exe.is_file():
        return [str(exe)]
    found = shutil.which("torch-model-archiver")
    if found is None:
        raise ExportError("torch-model-archiver not found; install the 'serve' extra (pip install -e '.[serve]')")
    return [found]


def stage_bundle(export_dir: Path, staging: Path, serving: ServingConfig) -> list[Path]:
    """Copy a verified export bundle plus serving.json into `staging`; rewrite the manifest; list the files.

    The bundle's `bundle_info.json` must be of a format this clipshield reads; the archiving build is added to it.
    """
    B.verify_manifest(export_dir)
    info = read_bundle_info(export_dir)
    for src in sorted(export_dir.iterdir()):
        if src.is_file() and src.name != B.MANIFEST:
            shutil.copy2(src, staging / src.name)
    write_bundle_info(staging, info.model_copy(update={"archived_by": current_build()}))
    (staging / SERVING_JSON).write_text(serving.model_dump_json(indent=2) + "\n")
    B.write_manifest(staging)
    return sorted(p for p in staging.iterdir() if p.is_file())


def build_archive(
    export_dir: Path,
    model_store: Path,
    name: str = "clipshield",
    version: Optional[str] = None,
    archive_format: ArchiveFormat = "default",
    serving: Optional[ServingConfig] = None,
    batching: Optional[BatchingConfig] = None,
) -> Path:
    """Build `model_store/<name>.mar` (or folder `model_store/<name>` for no-archive); return its path."""
    export_dir, model_store = Path(export_dir), Path(model_store)
    model_store.mkdir(parents=True, exist_ok=True)
    version = version or B.read_card(export_dir).version
    with tempfile.TemporaryDirectory(prefix="clipshield-archive-") as tmp:
        staging = Path(tmp)
        files = stage_bundle(export_dir, staging, serving or ServingConfig())
        config = staging / MODEL_CONFIG
        config.write_text(model_config_yaml(batching or BatchingConfig()))
        target = model_store / (name if archive_format == "no-archive" else f"{name}.mar")
        if target.is_dir():
            shutil.rmtree(target)
        # The handler goes in under a name no other module on TorchServe's path has (`handler` is generic).
        handler = shutil.copyfile(HANDLER, staging / ARCHIVED_HANDLER)
        cmd = _archiver() + [
            "--model-name",
            name,
            "--version",
            version,
            "--handler",
            str(handler),
            "--extra-files",
            ",".join(str(p) for p in files),
            "--config-file",
            str(config),
            "--export-path",
            str(model_store),
            "--archive-format",
            archive_format,
            "--force",
        ]
        # torch-model-archiver stages files in $TMPDIR/<model name>: a private TMPDIR keeps two builds of
        # the same model name (parallel tests, several users) from deleting each other's files.
        private_tmp = staging / "archiver-tmp"
        private_tmp.mkdir()
        env = {**os.environ, "TMPDIR": str(private_tmp)}
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
        if proc.returncode != 0:
            raise ExportError(f"torch-model-archiver failed: {(proc.stderr or proc.stdout).strip()[-500:]}")
    log.info("built TorchServe archive %s", target)
    return target
