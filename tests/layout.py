"""The product's top-level source folders, each installed as `clipshield.<folder>` (pyproject.toml).

One list for every test that walks the source tree (packaging, code shape, security, import layers), in
the order of the import layers of docs/ARCHITECTURE.md: a folder may import only the folders before it.
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# service/ first (the torch-free serving core), cli/ last (the top). handlers/ import service/ only.
PACKAGES = ("service", "models", "datasets", "attacks", "training", "evaluation", "experiments", "export", "handlers", "cli")
