"""Early-stopping PGD/CW: the same per-sample trajectories as the final-iterate protocol until a
sample is fooled, each fooled sample keeps its first fooling iterate, and robust accuracy is the
worst case over iterates (never above the final-iterate number)."""

from __future__ import annotations

from typing import Literal

import pytest
import torch

from clipshield.attacks.pgd import PGD, STOP_RULES, pgd_delta, random_start
from clipshield.datasets import DatasetRequest, build_dataset
from clipshield.models.factory import load_model
from clipshield.models.zero_shot import ZeroShotClassifier, build_text_head

from .test_attacks import toy_batch, toy_classifier

EPS = 2 / 255
STEPS = 12


def final_trajectory(model, images, labels, init, loss: Literal["ce", "cw"]) -> list[torch.Tensor]:
    """Iterates 0..STEPS of the final-iterate protocol (iterate k = `pgd_delta` with k steps)."""
    return [pgd_delta(model, images, labels, EPS, EPS / 4, k, init, loss) for k in range(STEPS + 1)]


def first_fooling(model, images, labels, trajectory) -> list[int]:
    """Per sample: index of the first iterate that fools `model`, or STEPS when none does."""
    with torch.no_grad():
        fooled = torch.stack([model(images + d).argmax(-1) != labels for d in trajectory[:-1]])  # [STEPS, B]
    return [int(col.nonzero()[0]) if bool(col.any()) else STEPS for col in fooled.T]


def toy_problem(n: int = 32):
    model = toy_classifier(10, seed=3)
    images, labels = toy_batch(n, model, seed=4)
    init = random_start(images, EPS, torch.Generator().manual_seed(5))
    return model, images, labels, init


@pytest.mark.parametrize("loss", ["ce", "cw"])
def test_early_stop_keeps_each_samples_final_protocol_iterate_at_its_first_fooling_step(loss):
    model, images, labels, init = toy_problem()
    trajectory = final_trajectory(model, images, labels, init, loss)
    stops = first_fooling(model, images, labels, trajectory)
    assert 0 < sum(s < STEPS for s in stops) < len(stops), "the problem must mix early-fooled and surviving samples"
    assert len(set(stops)) > 2, "samples must be fooled at different steps"
    early = pgd_delta(model, images, labels, EPS, EPS / 4, STEPS, init, loss, stop="early")
    expected = torch.stack([trajectory[s][i] for i, s in enumerate(stops)])
    torch.testing.assert_close(early, expected, atol=1e-6, rtol=0)


def test_early_stop_robust_accuracy_is_the_worst_case_over_iterates():
    model, images, labels, init = toy_problem(64)
    trajectory = final_trajectory(model, images, labels, init, "ce")
    early = pgd_delta(model, images, labels, EPS, EPS / 4, STEPS, init, "ce", stop="early")
    with torch.no_grad():
        survives_all = torch.stack([model(images + d).argmax(-1) == labels for d in trajectory]).all(0)
        final_ok = model(images + trajectory[-1]).argmax(-1) == labels
        early_ok = model(images + early).argmax(-1) == labels
    assert torch.equal(early_ok, survives_all)
    assert int(early_ok.sum()) <= int(final_ok.sum())


def test_attack_class_accepts_only_known_stop_rules():
    model, _images, _labels, _ = toy_problem(4)
    assert set(STOP_RULES) == {"early", "final"}
    with pytest.raises(ValueError, match="early, final"):
        PGD(model, eps=EPS, stop="best")


def test_early_stop_on_the_mini_world_clip_agrees_with_the_final_iterate_trajectory():
    """On the transformer the subset batches change float rounding only: at most 0.1 % of entries
    may differ (a flipped sign of a near-zero gradient), and every sample stays in the eps-ball."""
    model = load_model("miniworld")
    data = build_dataset("miniworld/plain/color_shape/seen", DatasetRequest(limit=24))
    clf = ZeroShotClassifier(model, build_text_head(model, data.classnames, data.templates)).eval()
    images, labels = data.images(), torch.as_tensor(data.labels)
    eps = 4 / 255
    init = random_start(images, eps, torch.Generator().manual_seed(0))
    trajectory = [pgd_delta(clf, images, labels, eps, eps / 4, k, init) for k in range(6)]
    with torch.no_grad():
        fooled = torch.stack([clf(images + d).argmax(-1) != labels for d in trajectory[:-1]])
    stops = [int(c.nonzero()[0]) if bool(c.any()) else 5 for c in fooled.T]
    early = pgd_delta(clf, images, labels, eps, eps / 4, 5, init, stop="early")
    expected = torch.stack([trajectory[s][i] for i, s in enumerate(stops)])
    equal = ((early - expected).abs() <= 1e-6).float().mean()
    assert float(equal) >= 0.999
    assert float(early.abs().max()) <= eps + 1e-6
