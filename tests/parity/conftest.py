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

    The goldens' 7x7 target grids (`map7_*_target`) and `image_tokens_adv_target` were captured
    after the reference's optimiser step (lr = lr_at_step0), while losses, logits, gradients and the
    full-resolution maps are from before it (measured: un-stepped tokens 6e-4 off, stepped 1e-6).
    Tests of those two golden kinds therefore compare at the stepped weights.
    """
    import copy

    out = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in out.clip.named_parameters():
            if name in grads:
                p -= lr * grads[name]
    return out
