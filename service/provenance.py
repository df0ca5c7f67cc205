"""Where a model or a number came from: weights digest, clipshield version, git commit.

One implementation shared by evaluation cells, model cards, bundles and archives, so that two
records naming the same digest or version mean the same thing. Torch appears in type hints only:
servers import this module (bundle versions) without torch installed.
"""

from __future__ import annotations

import hashlib
import subprocess
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

REPO = Path(__file__).resolve().parents[1]


def weights_digest(module: torch.nn.Module) -> str:
    """sha256 (16 hex digits) of a module's state dict: names, dtypes and bytes in name order.

    Two modules with equal digests hold bit-identical weights; retrained or fine-tuned weights
    always get a new digest, whatever the model is called.
    """
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def package_version() -> str:
    """Installed clipshield distribution version, or '0+unknown' when not installed."""
    try:
        return metadata.version("clipshield")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def git_commit() -> str:
    """`git rev-parse HEAD` of the source checkout, or 'unknown' outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"
