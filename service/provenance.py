"""Where a model or a number came from: weights digest, clipshield version, git commit.

One implementation shared by evaluation cells, model cards, bundles and archives, so that two
records naming the same digest or version mean the same thing. Torch-free: servers import this
module (bundle versions); the digest of a torch module's weights is `clipshield.models.checkpoint.weights_digest`.
"""

from __future__ import annotations

import subprocess
from importlib import metadata
from pathlib import Path

# git is asked from this module's folder: in a checkout it finds the repository, in an installed wheel none.
HERE = Path(__file__).resolve().parent


def package_version() -> str:
    """Installed clipshield distribution version, or '0+unknown' when not installed."""
    try:
        return metadata.version("clipshield")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def git_commit() -> str:
    """`git rev-parse HEAD` of the source checkout, or 'unknown' outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=HERE, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"
