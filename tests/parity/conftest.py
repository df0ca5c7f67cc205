"""Golden-model fixtures: the tiny CLIP of ../shared/goldens built through our loading path."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from service.checkpoint import load_weights
from service.models import from_record, load_model, record_from_arch


@pytest.fixture(scope="session")
def golden_inputs(goldens: Path) -> dict:
    arrays = dict(np.load(goldens / "inputs.npz"))
    meta = json.loads((goldens / "inputs.json").read_text())
    return {**{k: torch.from_numpy(v) for k, v in arrays.items()}, **meta}


@pytest.fixture(scope="session")
def frozen_model(goldens: Path):
    return load_model(str(goldens / "tiny_clip.json"), weights=str(goldens / "model_frozen.pt"))


@pytest.fixture(scope="session")
def target_model(goldens: Path):
    sd = load_weights(goldens / "model_frozen.pt")
    sd.update(load_weights(goldens / "model_target_visual.pt"))
    arch = json.loads((goldens / "tiny_clip.json").read_text())
    return from_record(record_from_arch("tiny_clip_target", arch), sd)


def load_golden(goldens: Path, name: str) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v) for k, v in np.load(goldens / name).items()}


def stepped_copy(model, grads: dict[str, torch.Tensor], lr: float):
    """Copy of `model` after one plain SGD step (momentum buffers are empty at step 0).

    The goldens' attention maps and image tokens of the *target* model were captured after the
    reference's optimiser step (lr = lr_at_step0), while its losses, logits and gradients are from
    before it: we measured the maps of the un-stepped target 1.9e-4 away from the golden maps and
    those of the stepped copy 1e-6 away. Map tests therefore compare at the stepped weights.
    """
    import copy

    out = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in out.clip.named_parameters():
            if name in grads:
                p -= lr * grads[name]
    return out
