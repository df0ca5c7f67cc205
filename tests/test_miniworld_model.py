"""The shipped mini-world CLIP has real zero-shot behaviour and is not robust (the phenomenon we defend against).

Thresholds carry margin below the measured numbers (see docs/development.md, 'The mini world').
"""

from __future__ import annotations

import pytest

from clipshield.datasets.miniworld.world import DOMAINS
from clipshield.evaluation.measure import AttackRecipe, clean_top1, measure, zero_shot_task

N = 256


def _accuracy(model, name: str, attack_eps: float | None = None) -> float:
    ds, clf, labels = zero_shot_task(model, name, N)
    if attack_eps is None:
        return clean_top1(clf, ds.images(), labels, batch_size=128)[0]
    return measure(clf, ds.images(), labels, AttackRecipe(eps=attack_eps, alpha=attack_eps / 4, steps=10), batch_size=128)[1]


@pytest.mark.parametrize("domain", DOMAINS)
@pytest.mark.parametrize("label_set", ["shape", "color", "color_shape"])
def test_seen_accuracy_at_least_85_percent(miniworld_model, domain, label_set):
    assert _accuracy(miniworld_model, f"miniworld/{domain}/{label_set}/seen") >= 0.85


@pytest.mark.parametrize("split", ["heldout_image", "heldout_caption"])
def test_heldout_combinations_clearly_above_chance(miniworld_model, split):
    acc = _accuracy(miniworld_model, f"miniworld/plain/color_shape/{split}")
    assert acc >= 5 * (1 / 64), f"{split}: {acc:.3f} vs chance {1 / 64:.3f}"


def test_pgd_collapses_the_base_model(miniworld_model):
    name = "miniworld/plain/color_shape/seen"
    clean = _accuracy(miniworld_model, name)
    robust = _accuracy(miniworld_model, name, attack_eps=4 / 255)
    assert clean >= 0.85
    assert robust < clean / 3, f"clean {clean:.3f}, robust {robust:.3f}"
