"""Shared fixtures: pinned threads, the goldens directory, the shipped mini-world model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

TEST_THREADS = 2
torch.set_num_threads(TEST_THREADS)
os.environ.setdefault("CLIPSHIELD_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _pinned_threads():
    """Every test starts with the same torch thread count, whatever an earlier one set (library calls
    such as `finetune(threads=1)` or `clipshield export` set it process-wide): float reduction order,
    and so the last bits of attack trajectories compared with the goldens, depend on it."""
    torch.set_num_threads(TEST_THREADS)
    yield


REPO = Path(__file__).resolve().parents[1]
GOLDENS_ENV = "CLIPSHIELD_GOLDENS"
DEFAULT_GOLDENS = REPO / "tests" / "data" / "goldens"
GOLDEN_FILES = ("inputs.npz", "inputs.json", "tiny_clip.json")
GOLDEN_WEIGHTS = ("model_frozen", "model_target_visual")
WEIGHT_SUFFIXES = (".safetensors", ".pt")


def goldens_dir() -> Path:
    """Goldens folder: `CLIPSHIELD_GOLDENS` when set, else the copy shipped in tests/data/goldens."""
    return Path(os.environ.get(GOLDENS_ENV) or DEFAULT_GOLDENS).resolve()


def golden_weights(folder: Path, stem: str) -> Path:
    """The state dict `stem` of a goldens folder: `.safetensors` (shipped copy) or `.pt` (original format)."""
    for suffix in WEIGHT_SUFFIXES:
        if (folder / f"{stem}{suffix}").is_file():
            return folder / f"{stem}{suffix}"
    pytest.fail(
        f"goldens folder {folder} has no {stem}{'|'.join(WEIGHT_SUFFIXES)}; "
        f"set {GOLDENS_ENV} to a complete goldens folder (default {DEFAULT_GOLDENS})",
        pytrace=False,
    )


@pytest.fixture(scope="session")
def goldens() -> Path:
    """The goldens folder, checked complete. Missing goldens fail (never skip) every test that needs them."""
    path = goldens_dir()
    missing = [name for name in GOLDEN_FILES if not (path / name).is_file()]
    missing += [
        f"{stem}{'|'.join(WEIGHT_SUFFIXES)}" for stem in GOLDEN_WEIGHTS if not any((path / f"{stem}{s}").is_file() for s in WEIGHT_SUFFIXES)
    ]
    if missing:
        pytest.fail(
            f"parity goldens missing in {path}: {', '.join(missing)}. The repository ships them in "
            f"{DEFAULT_GOLDENS}; {GOLDENS_ENV} overrides that folder.",
            pytrace=False,
        )
    return path


@pytest.fixture(scope="session")
def miniworld_model():
    from clipshield.models.factory import load_model

    return load_model("miniworld")
