"""TTC counterattack contract on the mini-world model: branches, eps-ball, box, determinism, errors."""

from __future__ import annotations

import math

import pytest
import torch

from clipshield.datasets import DatasetRequest, build_dataset
from clipshield.models.ttc import TTCClassifier, TTCConfig, counterattack, random_init, relative_shift, step_weights
from clipshield.models.zero_shot import build_text_head
from clipshield.service.errors import BadInput

DATASET = "miniworld/plain/shape/seen"
N = 8


@pytest.fixture(scope="module")
def task(miniworld_model):
    ds = build_dataset(DATASET, DatasetRequest(limit=N))
    head = build_text_head(miniworld_model, ds.classnames, ds.templates)
    return miniworld_model.eval(), head, ds.images()


def test_step_weights_follow_the_threshold_with_equality_taking_the_noise_branch():
    cfg = TTCConfig(tau_thres=0.5, beta=2.0, steps=3)
    w = step_weights(torch.tensor([0.1, 0.5, 0.9]), cfg)
    expected = torch.tensor([math.exp(2 * k) for k in range(4)])
    torch.testing.assert_close(w[0], expected / expected.sum())
    assert torch.equal(w[1], torch.tensor([1.0, 0, 0, 0])) and torch.equal(w[2], w[1])


def test_counterattack_stays_in_the_ball_and_box_and_branches_per_sample(task):
    model, _, images = task
    init = random_init(images, 4 / 255, torch.Generator().manual_seed(0))
    start = torch.clamp(init, -images, 1 - images)
    tau = relative_shift(model, images, start)
    thres = float(tau.median())
    cfg = TTCConfig(tau_thres=thres)
    out = counterattack(model, images, init, cfg)
    assert torch.equal(out.countered, tau < thres) and out.countered.any() and (~out.countered).any()
    assert float(out.delta.abs().max()) <= cfg.eps + 1e-6
    assert float((images + out.delta).min()) >= -1e-6 and float((images + out.delta).max()) <= 1 + 1e-6
    noise = ~out.countered
    torch.testing.assert_close(out.delta[noise], start[noise], atol=1e-7, rtol=0)
    assert float((out.delta[out.countered] - start[out.countered]).abs().max()) > cfg.step_size / 2
    # the counterattack pushes the embedding away from f(x) further than the noise alone
    moved = relative_shift(model, images, out.delta)
    assert bool((moved[out.countered] > tau[out.countered]).all())


def test_counterattack_is_per_sample(task):
    model, _, images = task
    init = random_init(images, 4 / 255, torch.Generator().manual_seed(1))
    cfg = TTCConfig(tau_thres=1.0)
    together = counterattack(model, images, init, cfg)
    alone = [counterattack(model, images[i : i + 1], init[i : i + 1], cfg) for i in range(2)]
    torch.testing.assert_close(torch.cat([a.tau for a in alone]), together.tau[:2], atol=1e-6, rtol=1e-5)
    # sign steps may flip on a rounding-level gradient entry; nearly every entry must agree
    delta = torch.cat([a.delta for a in alone])
    assert float(((delta - together.delta[:2]).abs() <= 1e-6).float().mean()) >= 0.999


def test_classifier_is_reproducible_from_its_generator_and_leaves_global_rng_alone(task):
    model, head, images = task
    cfg = TTCConfig(tau_thres=1.0)
    state = torch.random.get_rng_state()
    with torch.no_grad():
        a = TTCClassifier(model, head, cfg, generator=torch.Generator().manual_seed(3))(images)
        b = TTCClassifier(model, head, cfg, generator=torch.Generator().manual_seed(3))(images)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert a.shape == (len(images), head.shape[0]) and torch.equal(a, b)


def test_bad_inputs_are_rejected(task):
    model, _, images = task
    with pytest.raises(BadInput):
        counterattack(model, images, torch.zeros_like(images[:1]), TTCConfig())
    with pytest.raises(BadInput):
        counterattack(model, images * 2, torch.zeros_like(images), TTCConfig())
