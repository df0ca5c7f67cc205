"""Contract tests for every registered attack (toy model), PGD determinism and AutoAttack containment."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from clipshield.attacks import get_attack, list_attacks
from clipshield.attacks.autoattack import COMPONENTS

EPS = 8 / 255


def toy_classifier(n_classes: int, seed: int = 0) -> nn.Module:
    """A linear classifier over 3x8x8 images: cheap, differentiable, deterministic."""
    g = torch.Generator().manual_seed(seed)
    linear = nn.Linear(3 * 8 * 8, n_classes)
    model = nn.Sequential(nn.Flatten(), linear)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(linear.weight.shape, generator=g) * 0.5)
        linear.bias.zero_()
    return model.eval()


def toy_batch(n: int, model: nn.Module, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Images in [0, 1] labelled with the model's own prediction (so clean accuracy is 1)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand((n, 3, 8, 8), generator=g)
    with torch.no_grad():
        labels = model(images).argmax(-1)
    return images, labels


def build(name: str, model: nn.Module, eps: float = EPS, seed: int = 0, steps: int = 5):
    kwargs: dict[str, Any] = {"steps": steps, "generator": torch.Generator().manual_seed(seed)}
    if name.startswith("autoattack"):
        kwargs["square_queries"] = 20
    return get_attack(name)(model, eps=eps, **kwargs)


def test_registry_lists_every_attack_of_the_issue():
    assert {"pgd", "cw", "autoattack", "autoattack-ce-dlr", "autoattack-ce-t"} <= set(list_attacks())
    with pytest.raises(KeyError, match="known: "):
        get_attack("fgsm-typo")


@pytest.mark.parametrize("name", list_attacks())
def test_attack_contract(name):
    """[0, 1] box, eps-ball, shape, model mode restored, global RNG untouched, and it fools something."""
    model = toy_classifier(10)
    images, labels = toy_batch(8, model)
    model.train()  # the attack must hand the model back in the mode it found it
    rng_before = torch.get_rng_state()
    adv = build(name, model)(images, labels)
    assert torch.equal(torch.get_rng_state(), rng_before), f"{name} changed the global RNG state"
    assert model.training
    assert all(p.grad is None and p.requires_grad for p in model.parameters()), f"{name} touched parameter gradients"
    assert adv.shape == images.shape and adv.dtype == images.dtype
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
    assert float((adv - images).abs().max()) <= EPS + 1e-6
    with torch.no_grad():
        fooled = (model(adv).argmax(-1) != labels).float().mean()
    assert fooled > 0.5, f"{name} fooled only {fooled:.2f} of a linear model at eps 8/255"


@pytest.mark.parametrize("name", list_attacks())
def test_attack_rejects_images_outside_unit_box(name):
    model = toy_classifier(10)
    images, labels = toy_batch(2, model)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        build(name, model)(images * 2 - 0.5, labels)


def test_pgd_is_deterministic_given_the_generator():
    model = toy_classifier(10)
    images, labels = toy_batch(8, model)
    a = build("pgd", model, eps=1 / 255, seed=3)(images, labels)
    b = build("pgd", model, eps=1 / 255, seed=3)(images, labels)
    c = build("pgd", model, eps=1 / 255, seed=4)(images, labels)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_pgd_zero_eps_returns_the_clean_images():
    model = toy_classifier(10)
    images, labels = toy_batch(4, model)
    assert torch.equal(build("pgd", model, eps=0.0)(images, labels), images)


def test_autoattack_skips_components_a_binary_task_cannot_run():
    model = toy_classifier(2)
    images, labels = toy_batch(8, model)
    attack = build("autoattack-ce-dlr", model, eps=0.5)
    adv = attack(images, labels)
    assert set(attack.records) <= {"apgd-ce"}  # DLR needs >= 3 classes: skipped, not crashed
    with torch.no_grad():
        assert (model(adv).argmax(-1) != labels).all()


def test_autoattack_versions_follow_the_papers():
    assert COMPONENTS["standard"] == ("apgd-ce", "apgd-t", "fab-t", "square")
    assert COMPONENTS["ce-dlr"] == ("apgd-ce", "apgd-dlr")
    assert COMPONENTS["ce-t"] == ("apgd-ce", "apgd-t")
    assert get_attack("autoattack").version == "standard"
    assert get_attack("autoattack-ce-dlr").version == "ce-dlr"
    assert get_attack("autoattack-ce-t").version == "ce-t"


def test_autoattack_is_deterministic_given_the_generator():
    model = toy_classifier(10)
    images, labels = toy_batch(6, model)
    a = build("autoattack-ce-t", model, eps=2 / 255, seed=5)(images, labels)
    b = build("autoattack-ce-t", model, eps=2 / 255, seed=5)(images, labels)
    assert torch.equal(a, b)
