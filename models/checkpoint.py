"""Checkpoints: a folder with `config.json` (a ModelRecord) and `model.safetensors`.

safetensors never executes code on load, so a checkpoint from an untrusted source can at worst be
wrong, not hostile. Extra JSON documents (run config, model card) live beside them.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Optional

import torch
from pydantic import ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from clipshield.service.config import ModelRecord
from clipshield.service.errors import ModelLoadError

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def weights_digest(module: torch.nn.Module) -> str:
    """sha256 (16 hex digits) of a module's state dict: names, dtypes and bytes in name order.

    Two modules with equal digests hold bit-identical weights; retrained or fine-tuned weights
    always get a new digest, whatever the model is called.
    """
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        # raw bytes through a uint8 view: numpy has no bfloat16, and the bytes are the same for every dtype it has
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def _umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux /proc)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: the classic read-by-setting, restored at once
    os.umask(mask)
    return mask


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: Optional[dict[str, str]] = None) -> None:
    """Write `tensors` to `path` via a temporary file and a rename, with ordinary file permissions.

    safetensors creates its files with mode 0600; this gives them 0666 minus the umask (0644 under
    the usual 022), like every other file a run writes.
    """
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    os.chmod(tmp, 0o666 & ~_umask())
    tmp.replace(path)


def is_checkpoint_dir(path: Path) -> bool:
    """True when `path` is a folder holding a clipshield checkpoint."""
    return path.is_dir() and (path / CONFIG_NAME).is_file() and (path / WEIGHTS_NAME).is_file()


def save_checkpoint(
    folder: Path,
    record: ModelRecord,
    state_dict: dict[str, torch.Tensor],
    dtype: Optional[torch.dtype] = None,
    extra: Optional[dict[str, Any]] = None,
) -> Path:
    """Write record + weights (optionally cast to `dtype`) atomically enough for resume."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for k, v in state_dict.items():
        v = v.detach().cpu()
        if dtype is not None and v.is_floating_point():
            v = v.to(dtype)
        tensors[k] = v.contiguous()
    write_safetensors(folder / WEIGHTS_NAME, tensors, metadata={"format": "pt"})
    (folder / CONFIG_NAME).write_text(record.model_dump_json(indent=2))
    for name, doc in (extra or {}).items():
        (folder / name).write_text(json.dumps(doc, indent=2, sort_keys=True))
    return folder


def load_record(folder: Path) -> ModelRecord:
    """Parse a checkpoint's config.json, with a clear error when it is missing or invalid."""
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise ModelLoadError(f"no {CONFIG_NAME} in {folder}: not a clipshield checkpoint folder")
    try:
        return ModelRecord.model_validate_json(path.read_text())
    except ValidationError as exc:  # one line (the CLI prints it as is): how many problems and the first
        first = exc.errors()[0]
        where = ".".join(map(str, first["loc"])) or "the file"
        raise ModelLoadError(f"invalid {path}: {exc.error_count()} problem(s), first at {where}: {first['msg']}") from None


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """Float32 state dict from a safetensors file, or a plain tensor pickle loaded with weights_only.

    `.pt`/`.bin` files are loaded with `torch.load(weights_only=True)`, which refuses arbitrary
    objects; anything else is rejected.
    """
    if not path.is_file():
        raise ModelLoadError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        try:
            sd = load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise ModelLoadError(f"{path} is not a readable safetensors file ({exc}): re-save or re-download it") from None
    elif path.suffix in (".pt", ".pth", ".bin"):
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ModelLoadError(f"cannot load {path} safely (weights_only): {exc}") from exc
        if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
            sd = sd["state_dict"]
    else:
        raise ModelLoadError(f"unsupported weights format {path.suffix!r}: use .safetensors (or .pt/.bin state dicts)")
    if not isinstance(sd, dict):
        raise ModelLoadError(f"{path} does not hold a state dict")
    return {k: (v.float() if v.is_floating_point() else v) for k, v in sd.items()}
