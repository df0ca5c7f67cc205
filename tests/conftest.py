"""Shared fixtures: pinned threads, the goldens directory, the shipped mini-world model."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(2)
os.environ.setdefault("CLIPSHIELD_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]


def goldens_dir() -> Path:
    """Goldens folder from CLIPSHIELD_GOLDENS (default ../shared/goldens beside the repo)."""
    return Path(os.environ.get("CLIPSHIELD_GOLDENS", REPO.parent / "shared" / "goldens")).resolve()


@pytest.fixture(scope="session")
def goldens() -> Path:
    path = goldens_dir()
    if not (path / "inputs.npz").is_file():
        pytest.skip(f"goldens not found at {path} (set CLIPSHIELD_GOLDENS)")
    return path


@pytest.fixture(scope="session")
def miniworld_model():
    from service.models import load_model

    return load_model("miniworld")
