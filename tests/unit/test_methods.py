"""Contract tests for every registered fine-tuning method on a tiny random mini-world CLIP."""

from __future__ import annotations

import pytest
import torch

from clipshield.models.factory import from_record
from clipshield.training.methods import AttackBudget, FrozenBatch, LossInputs, TextHeads, get_method, list_methods
from clipshield.training.methods.attention import complementary_map, map_distance, text_guided_map
from clipshield.training.pretrain import miniworld_record

EPS = 4 / 255


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    target = from_record(miniworld_record())
    frozen = from_record(miniworld_record())
    frozen.load_state_dict(target.state_dict())
    with torch.no_grad():  # make target != frozen so "which model" mistakes show
        for p in target.visual.parameters():
            p.add_(0.05 * torch.randn_like(p))
    g = torch.Generator().manual_seed(1)
    images = torch.rand(6, 3, 32, 32, generator=g)
    labels = torch.tensor([0, 1, 2, 3, 1, 4])
    classes = torch.nn.functional.normalize(torch.randn(5, target.clip.text_projection.shape[1], generator=g), dim=-1)
    negatives = torch.nn.functional.normalize(torch.randn(5, classes.shape[1], generator=g), dim=-1)
    return target, frozen, images, labels, TextHeads(classes, negatives)


def test_registry_lists_all_methods():
    assert list_methods() == sorted(["comp-tga", "fare", "ft-adv", "ft-clean", "pmg-aft", "tecoa", "tga-anchor", "tga-zsr"])
    with pytest.raises(KeyError, match="known: comp-tga"):
        get_method("trades")


@pytest.mark.parametrize("name", list_methods())
def test_method_step_contract(tiny, name):
    target, frozen, images, labels, heads = tiny
    method = get_method(name)
    params = method.params()
    gen = torch.Generator().manual_seed(0)
    batch = LossInputs(target, images, labels, heads, frozen=FrozenBatch(frozen) if method.needs_frozen else None)
    adv = method.adversary.perturb(batch, params, AttackBudget(EPS, EPS * method.adversary.alpha_per_eps, 2), gen)
    if method.adversary.kind == "none":
        assert adv is None
    else:
        assert adv.shape == images.shape and adv.min() >= 0 and adv.max() <= 1
        assert (adv - images).abs().max() <= EPS + 1e-6
        assert (adv - images).abs().max() > EPS / 2, "the attack must move the images"
    target.zero_grad(set_to_none=True)
    out = method.loss(batch.with_adv(adv), params)
    assert out.total.ndim == 0 and torch.isfinite(out.total)
    out.total.backward()
    with_grad = {n for n, p in target.clip.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert with_grad and all(n.startswith("visual.") for n in with_grad)
    assert all(p.grad is None for p in frozen.parameters())
    target.zero_grad(set_to_none=True)


def test_methods_without_frozen_model_fail_clearly(tiny):
    target, _, images, labels, heads = tiny
    method = get_method("tga-zsr")
    with pytest.raises(ValueError, match="frozen"):
        method.loss(LossInputs(target, images, labels, heads, adv=images), method.params())


def test_attention_map_properties():
    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(3, 17, 8, generator=g)
    text = torch.nn.functional.normalize(torch.randn(3, 8, generator=g), dim=-1)
    flat, grid = text_guided_map(tokens, text, 32)
    assert grid.shape == (3, 4, 4) and flat.shape == (3, 32 * 32)
    assert torch.allclose(grid.flatten(1).amin(1), torch.zeros(3)) and torch.allclose(grid.flatten(1).amax(1), torch.ones(3))
    # the map is invariant to a positive scale of the query (Comp-TGA passes s * t)
    torch.testing.assert_close(text_guided_map(tokens, 100 * text, 32)[0], flat)
    # per-channel normalisation over tokens: scaling one channel of all tokens changes nothing
    scaled = tokens.clone()
    scaled[..., 0] *= 7
    torch.testing.assert_close(text_guided_map(scaled, text, 32)[0], flat, atol=1e-5, rtol=0)
    comp, grids = complementary_map(tokens, text, -text, 32)
    assert comp.min() >= 0 and comp.max() <= 1 and set(grids) == {"pos", "neg", "fused"}
    with pytest.raises(ValueError, match="square"):
        text_guided_map(torch.randn(1, 11, 8), text[:1], 32)


def test_map_distances():
    a, b = torch.zeros(2, 4), torch.ones(2, 4)
    assert float(map_distance(a, b, "l2")) == pytest.approx(2.0)
    assert float(map_distance(a, b, "l1")) == pytest.approx(1.0)
    assert float(map_distance(b, b, "cos")) == pytest.approx(0.0, abs=1e-6)
    assert float(map_distance(a, b, "rms")) == pytest.approx(1.0)  # l2 / sqrt(4 pixels)
    with pytest.raises(ValueError, match="known: l2"):
        map_distance(a, b, "kl")


def test_per_token_map_norm_is_a_different_option(tiny):
    target, frozen, images, labels, heads = tiny
    method = get_method("tga-zsr")
    batch = LossInputs(target, images, labels, heads, adv=images, frozen=FrozenBatch(frozen))
    ref = method.loss(batch, method.params())
    alt = method.loss(
        LossInputs(target, images, labels, heads, adv=images, frozen=FrozenBatch(frozen)), method.params(map_norm="per_token")
    )
    torch.testing.assert_close(alt.terms["ce"], ref.terms["ce"])
    assert not torch.allclose(alt.outputs["map_clean_frozen"], ref.outputs["map_clean_frozen"])
