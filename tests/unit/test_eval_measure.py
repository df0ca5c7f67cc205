"""The quick measurements (demo, purification sweep, flag calibration, tests) go through the runner.

`measure` must give exactly the numbers of the hand-written loop it replaced: one PGD whose random
starts come from a single generator seeded once, over consecutive batches. `AttackRecipe` must build
the attack the runner built from a cell key before it existed.
"""

from __future__ import annotations

import pytest
import torch

from clipshield.attacks.pgd import PGD
from clipshield.evaluation.measure import AttackRecipe, clean_and_attacked, clean_top1, measure, zero_shot_task
from clipshield.evaluation.schema import CellKey
from clipshield.evaluation.zeroshot import accuracy, batches
from clipshield.service.config import PreprocessConfig

NAME = "miniworld/plain/color_shape/seen"
EPS = 4 / 255


def test_measure_matches_the_hand_written_clean_and_pgd_loop(miniworld_model):
    ds, clf, labels = zero_shot_task(miniworld_model, NAME, 16)
    images = ds.images()
    clean_old, n_old = accuracy(clf, batches(images, labels, 8))
    pgd = PGD(clf, eps=EPS, steps=2, generator=torch.Generator().manual_seed(5))
    robust_old, _ = accuracy(clf, batches(images, labels, 8), attack=pgd)
    clean, robust, n = measure(clf, images, labels, AttackRecipe(eps=EPS, steps=2), batch_size=8, seed=5)
    assert (clean, robust, n) == (clean_old, robust_old, n_old) and n == 16
    assert robust < clean  # the attack ran: the base model is not robust
    assert clean_top1(clf, images, labels, batch_size=8) == (clean_old, 16)


def test_attack_differentiates_the_target_and_is_judged_on_the_classifier(miniworld_model):
    ds, clf, labels = zero_shot_task(miniworld_model, NAME, 16)
    seen = []

    def target(images):
        seen.append(images.shape[0])
        return clf(images)

    clean, robust, _ = measure(clf, ds.images(), labels, AttackRecipe(eps=EPS, steps=2), batch_size=8, target=target)
    assert seen == [8, 8, 8, 8]  # two steps per batch, every one through the target
    assert robust <= clean


def test_an_attack_without_seeds_is_refused():
    with pytest.raises(ValueError, match="generator_for"):
        clean_and_attacked(lambda x: x, lambda: iter([]), AttackRecipe(eps=EPS, steps=1))


@pytest.mark.parametrize("attack, stop, alpha", [("pgd", "early", None), ("cw", "final", 0.5 / 255)])
def test_recipe_of_a_cell_builds_its_attack(attack, stop, alpha):
    key = CellKey(
        weights="0" * 16,
        dataset=NAME,
        preprocess=PreprocessConfig(image_size=32),
        attack=attack,
        eps=EPS,
        steps=7,
        alpha=alpha,
        restarts=2,
        seed=0,
        stop=stop,
    )
    built = AttackRecipe.of_cell(key).build(lambda x: x, torch.Generator())
    assert type(built).name == attack and built.eps == EPS and built.steps == 7 and built.restarts == 2
    assert built.stop == stop and built.alpha == (EPS / 4 if alpha is None else alpha)
