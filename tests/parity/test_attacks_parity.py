"""PGD and CW against TGA-ZSR's attacks.py (attacks_tga.npz, target model, fixed starts pgd_init_eps1).

Tolerance (goldens README section 5): at least 99.99 % of delta entries equal within 1e-6; the rest
may differ by a multiple of 1/255 (sign of a near-zero gradient). Sizes come from the goldens.
"""
from __future__ import annotations

import pytest
import torch

from service.zero_shot import ZeroShotClassifier, build_text_head
from training.attacks import get_attack

from .conftest import load_golden

CASES = [("pgd2", "pgd", 2), ("pgd100", "pgd", 100), ("cw100", "cw", 100)]


@pytest.fixture(scope="module")
def setup(goldens, target_model, golden_inputs):
    head = build_text_head(target_model, golden_inputs["classnames"], [golden_inputs["template"]])
    clf = ZeroShotClassifier(target_model, head).eval()
    return clf, load_golden(goldens, "attacks_tga.npz")


def _check_delta(delta: torch.Tensor, golden: torch.Tensor, eps: float) -> None:
    diff = (delta - golden).abs()
    close = diff <= 1e-6
    assert close.float().mean() >= 0.9999, f"only {close.float().mean():.6f} of entries within 1e-6"
    steps = diff[~close] * 255
    assert torch.allclose(steps, steps.round(), atol=1e-3), "mismatches are not multiples of 1/255"
    assert float(delta.abs().max()) <= eps + 1e-7


def test_clean_logits_match(setup, golden_inputs):
    clf, g = setup
    with torch.no_grad():
        torch.testing.assert_close(clf(golden_inputs["images"]), g["clean_logits"], atol=1e-4, rtol=0)


@pytest.mark.parametrize("key,attack_name,steps", CASES)
def test_attack_matches_reference(setup, golden_inputs, key, attack_name, steps):
    clf, g = setup
    eps = float(golden_inputs["eps"])
    images, labels = golden_inputs["images"], torch.as_tensor(golden_inputs["labels"], dtype=torch.int64)
    attack = get_attack(attack_name)(clf, eps=eps, alpha=eps, steps=steps)
    adv = attack.perturb(images, labels, init=golden_inputs["pgd_init_eps1"])  # the golden random start
    delta = adv - images
    _check_delta(delta, g[f"{key}_delta"], eps)
    with torch.no_grad():
        logits = clf(images + g[f"{key}_delta"])
    torch.testing.assert_close(logits, g[f"{key}_logits"], atol=1e-4, rtol=0)
