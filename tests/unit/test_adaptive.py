"""Adaptive attacks on CLIPure-Cos: the evaluator catches gradient masking on the mini-world model."""

from __future__ import annotations

import pytest
import torch

from clipshield.attacks import get_attack
from clipshield.attacks.adaptive import (
    GRADIENT_MASKED,
    NOT_MASKED,
    StraightThroughPurified,
    evaluate_adaptive,
    input_gradient_norm,
    masking_verdict,
    surrogate,
    unpurified,
)
from clipshield.datasets import DatasetRequest, build_dataset
from clipshield.evaluation.zeroshot import batches
from clipshield.models.purify import PurifiedClassifier, PurifyConfig, blank_anchor
from clipshield.models.zero_shot import build_text_head

DATASET = "miniworld/plain/shape/seen"
N = 48
EPS = 4 / 255  # the mini world's reference epsilon


@pytest.fixture(scope="module")
def task(miniworld_model):
    ds = build_dataset(DATASET, DatasetRequest(limit=N))
    head = build_text_head(miniworld_model, ds.classnames, ds.templates)
    anchor = blank_anchor(miniworld_model, ds.templates)
    return miniworld_model.eval(), head, anchor, ds.images(), torch.as_tensor(ds.labels)


def purified(task, steps: int = 10, step_size: float = 30.0) -> PurifiedClassifier:
    model, head, anchor, _, _ = task
    return PurifiedClassifier(model, head, anchor, PurifyConfig(steps=steps, step_size=step_size)).eval()


def pgd5(classifier):
    return get_attack("pgd")(classifier, eps=EPS, alpha=EPS / 2, steps=5, generator=torch.Generator().manual_seed(0))


def test_straight_through_forward_is_purified_and_backward_is_identity(task):
    pc = purified(task)
    st = StraightThroughPurified(pc)
    images = task[3][:8]
    with torch.no_grad():
        torch.testing.assert_close(st(images), pc(images), atol=1e-4, rtol=0)
    w = torch.randn(8, task[1].shape[0], generator=torch.Generator().manual_seed(0))
    x1 = images.clone().requires_grad_(True)
    (g_st,) = torch.autograd.grad((st(x1) * w).sum(), x1)
    x2 = images.clone().requires_grad_(True)
    (g_plain,) = torch.autograd.grad((unpurified(pc)(x2) * w).sum(), x2)
    torch.testing.assert_close(g_st, g_plain, atol=1e-5, rtol=1e-4)


def test_surrogates_share_the_serving_classifier(task):
    pc = purified(task)
    assert surrogate(pc, "full") is pc
    assert surrogate(pc, "bpda").purified is pc
    plain = surrogate(pc, "transfer")
    assert plain.model is pc.model and torch.equal(plain.head, pc.head) and plain.scale == pc.scale
    with pytest.raises(ValueError, match="known: full, bpda, transfer"):
        surrogate(pc, "eot")


def test_gradient_through_purification_vanishes(task):
    pc = purified(task)
    images, labels = task[3][:16], task[4][:16]
    through = input_gradient_norm(pc, images, labels)
    plain = input_gradient_norm(unpurified(pc), images, labels)
    assert float(plain.median()) > 1e-4  # a real, non-vanishing gradient without purification
    assert float(through.median()) < 1e-4 * float(plain.median())


def test_adaptive_report_marks_clipure_as_gradient_masked(task):
    """10 purification steps of size 30: PGD through them barely moves accuracy, BPDA and transfer collapse it."""
    pc = purified(task)
    images, labels = task[3], task[4]
    report = evaluate_adaptive(pc, pgd5, batches(images, labels, N))
    assert report.n == N and report.clean >= 0.7
    assert report.grad_ratio < 1e-4
    assert report.robust["bpda"] <= report.clean / 3, report
    assert report.robust["full"] - report.robust["bpda"] >= 0.3, report
    assert report.worst_case <= min(report.robust.values())
    assert report.verdict == GRADIENT_MASKED


def test_no_purification_is_not_flagged(task):
    pc = purified(task, steps=0)  # identity purification: gradients flow normally
    images, labels = task[3][:16], task[4][:16]
    report = evaluate_adaptive(pc, pgd5, batches(images, labels, 16), modes=("full", "transfer"))
    assert report.grad_ratio == pytest.approx(1.0, rel=1e-3)
    assert report.verdict == NOT_MASKED


def test_masking_verdict_rules():
    assert masking_verdict(1e-8, {"full": 0.8, "bpda": 0.0, "transfer": 0.1}) == GRADIENT_MASKED
    assert masking_verdict(1.0, {"full": 0.8, "bpda": 0.0, "transfer": 0.1}) == NOT_MASKED  # gradients fine
    assert masking_verdict(1e-8, {"full": 0.3, "bpda": 0.28, "transfer": 0.3}) == NOT_MASKED  # nothing does better
    assert masking_verdict(1e-8, {"full": 0.8}) == NOT_MASKED  # no gradient-free attack to compare with
