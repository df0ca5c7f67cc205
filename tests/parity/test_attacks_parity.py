"""PGD and CW against TGA-ZSR's attacks.py (attacks_tga.npz, target model, fixed starts pgd_init_eps1).

Tolerance (goldens README sections 5 and 6): at least 99.99 % of delta entries equal within 1e-6
(99.98 % for the 100-step chains, whose flips depend on the CPU: see conftest); the
rest may lie anywhere inside the eps-ball (the sign of a near-zero gradient flipped, then clamped to the
ball and the box), and every entry stays within eps of the clean image. Sizes come from the goldens.
"""

from __future__ import annotations

import pytest
import torch

from clipshield.attacks import get_attack
from clipshield.models.zero_shot import ZeroShotClassifier, build_text_head

from .conftest import ATTACK_MIN_EQUAL_FRACTION, LONG_ATTACK_MIN_EQUAL_FRACTION, assert_attack_matches, load_golden

CASES = [("pgd2", "pgd", 2), ("pgd100", "pgd", 100), ("cw100", "cw", 100)]


@pytest.fixture(scope="module")
def setup(goldens, target_model, golden_inputs):
    head = build_text_head(target_model, golden_inputs["classnames"], [golden_inputs["template"]])
    clf = ZeroShotClassifier(target_model, head).eval()
    return clf, load_golden(goldens, "attacks_tga.npz")


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
    min_equal = LONG_ATTACK_MIN_EQUAL_FRACTION if steps >= 100 else ATTACK_MIN_EQUAL_FRACTION
    assert_attack_matches(adv - images, g[f"{key}_delta"], images, eps, min_equal)
    with torch.no_grad():
        logits = clf(images + g[f"{key}_delta"])
    torch.testing.assert_close(logits, g[f"{key}_logits"], atol=1e-4, rtol=0)


def test_attack_on_a_sub_batch_matches_the_same_rows(setup, golden_inputs):
    """PGD is per-sample (a batch-mean loss only rescales each sample's gradient, not its sign), so
    the goldens' rows reproduce on a sub-batch: nothing depends on the golden set's batch size."""
    clf, g = setup
    eps = float(golden_inputs["eps"])
    rows = slice(1, None) if len(golden_inputs["images"]) > 1 else slice(None)
    images = golden_inputs["images"][rows]
    labels = torch.as_tensor(golden_inputs["labels"], dtype=torch.int64)[rows]
    attack = get_attack("pgd")(clf, eps=eps, alpha=eps, steps=2)
    adv = attack.perturb(images, labels, init=golden_inputs["pgd_init_eps1"][rows])
    assert_attack_matches(adv - images, g["pgd2_delta"][rows], images, eps)
