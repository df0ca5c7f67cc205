"""The one detector-metrics module (`clipshield.service.detection_metrics`, torch-free): hand-checked values,
agreement with scipy's Mann-Whitney U, the threshold rule, and input checks raising ConfigError."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clipshield.service.detection_metrics import auroc, flag_rate, threshold_above_fpr, tpr_at_fpr
from clipshield.service.errors import ConfigError


def test_auroc_on_hand_checked_cases():
    assert auroc([0.0, 1.0, 2.0], [1.5, 3.0]) == pytest.approx(5 / 6)
    assert auroc([1.0, 2.0], [1.0, 2.0]) == pytest.approx(0.5)  # ties count half
    assert auroc(np.zeros(50), np.ones(50)) == 1.0 and auroc(np.ones(50), np.zeros(50)) == 0.0


def test_auroc_is_mann_whitney_u_over_the_pairs():
    from scipy.stats import mannwhitneyu

    rng = np.random.default_rng(0)
    neg, pos = np.round(rng.normal(size=300), 1), np.round(rng.normal(0.5, size=200), 1)  # rounded: many ties
    u = mannwhitneyu(pos, neg).statistic
    assert auroc(neg, pos) == pytest.approx(float(u) / (len(pos) * len(neg)), abs=1e-12)


def test_torch_tensors_and_numpy_arrays_give_the_same_figures():
    g = torch.Generator().manual_seed(1)
    neg, pos = torch.randn(100, generator=g), torch.randn(80, generator=g) + 1
    assert auroc(neg, pos) == auroc(neg.numpy(), pos.numpy())
    assert threshold_above_fpr(neg, 0.05) == threshold_above_fpr(neg.numpy(), 0.05)


def test_threshold_flags_at_most_the_target_share():
    scores = np.arange(20, dtype=np.float32)  # 0..19
    assert threshold_above_fpr(scores, 0.1) == 17.0  # 18 and 19 are above: 2 of 20
    assert threshold_above_fpr(np.ones(10), 0.3) == 1.0  # ties: nothing strictly above
    for target in (0.01, 0.05, 0.2):
        s = np.random.default_rng(2).normal(size=1000)
        t = threshold_above_fpr(s, target)
        assert flag_rate(s, t) <= target and flag_rate(s, t - 1e-9) > target - 2 / len(s)  # the smallest such threshold


def test_tpr_at_fpr_on_hand_checked_cases():
    neg, pos = np.arange(10, dtype=np.float32), np.array([5.5, 8.5, 9.5, 20.0])
    assert tpr_at_fpr(neg, pos, 0.1) == pytest.approx(0.75)  # threshold 8
    assert tpr_at_fpr(neg, pos, 0.01) == pytest.approx(0.5)  # threshold 9


@pytest.mark.parametrize(
    ("call", "words"),
    [
        (lambda: auroc([], [1.0]), "negative scores is empty"),
        (lambda: auroc([0.0], []), "positive scores is empty"),
        (lambda: auroc([0.0, float("nan")], [1.0]), "non-finite"),
        (lambda: auroc(np.zeros((2, 2)), [1.0]), r"1-D .*\[2, 2\]"),
        (lambda: auroc(["a"], [1.0]), "numbers"),
        (lambda: threshold_above_fpr([1.0, 2.0], 0.0), "strictly between 0 and 1"),
        (lambda: threshold_above_fpr([1.0, 2.0], 1.0), "strictly between 0 and 1"),
        (lambda: tpr_at_fpr([1.0], [float("inf")], 0.05), "non-finite"),
        (lambda: flag_rate([], 0.0), "empty"),
    ],
)
def test_bad_inputs_are_config_errors_naming_the_problem(call, words):
    with pytest.raises(ConfigError, match=words):
        call()
