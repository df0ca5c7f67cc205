"""TGA-Anchor (ours, docs/methods.md §8): TGA-ZSR's terms plus a relative embedding anchor to the frozen model."""

from __future__ import annotations

import pytest
import torch

from clipshield.models.factory import from_record
from clipshield.training.methods import AttackBudget, FrozenBatch, LossInputs, TextHeads, get_method
from clipshield.training.methods.tga_anchor import TGAAnchorParams, relative_anchor
from clipshield.training.pretrain import miniworld_record

EPS = 4 / 255


@pytest.fixture()
def models():
    torch.manual_seed(0)
    target = from_record(miniworld_record())
    frozen = from_record(miniworld_record())
    frozen.load_state_dict(target.state_dict())
    g = torch.Generator().manual_seed(1)
    images = torch.rand(6, 3, 32, 32, generator=g)
    labels = torch.tensor([0, 1, 2, 3, 1, 4])
    classes = torch.nn.functional.normalize(torch.randn(5, target.clip.text_projection.shape[1], generator=g), dim=-1)
    return target, frozen, images, labels, TextHeads(classes)


def _loss(models, params: TGAAnchorParams, adv=None, method: str = "tga-anchor"):
    target, frozen, images, labels, heads = models
    batch = LossInputs(target, images, labels, heads, adv=images if adv is None else adv, frozen=FrozenBatch(frozen))
    return get_method(method).loss(batch, params)


def _perturb(model, scale: float = 0.05) -> None:
    with torch.no_grad():
        for p in model.visual.parameters():
            p.add_(scale * torch.randn_like(p))


def test_registered_with_tga_defaults_and_gamma():
    method = get_method("tga-anchor")
    params = method.params()
    assert method.needs_frozen and method.adversary.kind == get_method("tga-zsr").adversary.kind
    assert params.gamma > 0 and params.distance == "rms"
    # rms with alpha, beta x 32 is TGA-ZSR's reference l2 loss at 32 px (docs/methods.md §3.3)
    assert (params.alpha, params.beta) == pytest.approx((0.08 * 32, 0.05 * 32))
    assert method.description.startswith("TGA-Anchor (ours)")
    with pytest.raises(ValueError):
        TGAAnchorParams(gamma=-1)


def test_anchor_is_zero_at_the_frozen_model_and_positive_after_a_change(models):
    out = _loss(models, TGAAnchorParams())
    assert set(out.terms) >= {"ce", "ar", "amc", "anchor", "anchor_weighted"}
    assert all(torch.isfinite(v) for v in out.terms.values())
    assert float(out.terms["anchor"].detach()) == pytest.approx(0.0, abs=1e-10)
    _perturb(models[0])
    moved = _loss(models, TGAAnchorParams())
    assert float(moved.terms["anchor"].detach()) > 1e-4
    torch.testing.assert_close(moved.terms["anchor_weighted"], moved.terms["anchor"])  # gamma 1


def test_gamma_zero_is_tga_zsr_and_gamma_adds_its_term(models):
    _perturb(models[0])
    images = models[2]
    adv = (images + EPS * torch.sign(torch.randn_like(images))).clamp(0, 1)
    tga = _loss(models, get_method("tga-zsr").params(), adv, method="tga-zsr")  # reference l2, 0.08, 0.05
    zero = _loss(models, TGAAnchorParams(gamma=0), adv)
    torch.testing.assert_close(zero.total, tga.total)  # at 32 px the defaults are the reference loss
    two = _loss(models, TGAAnchorParams(gamma=2.0), adv)
    torch.testing.assert_close(two.total, tga.total + 2.0 * two.terms["anchor"])


def test_anchor_gradient_reaches_only_the_image_tower_and_is_deterministic(models):
    target, frozen, images, labels, heads = models
    _perturb(target)
    params = TGAAnchorParams(alpha=0, beta=0, gamma=1.0)
    method = get_method("tga-anchor")
    batch = LossInputs(target, images, labels, heads, frozen=FrozenBatch(frozen))
    adv = method.adversary.perturb(batch, params, AttackBudget(EPS, EPS, 2), torch.Generator().manual_seed(0))
    again = method.adversary.perturb(batch, params, AttackBudget(EPS, EPS, 2), torch.Generator().manual_seed(0))
    assert torch.equal(adv, again)
    out = _loss(models, params, adv)
    grads = torch.autograd.grad(out.terms["anchor"], list(target.visual.parameters()), allow_unused=True)
    assert sum(float(g.abs().sum()) for g in grads if g is not None) > 0
    assert torch.equal(_loss(models, params, adv).total, out.total)


def test_relative_anchor_is_scale_free():
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(4, 8, generator=g)
    emb = ref + 0.1 * torch.randn(4, 8, generator=g)
    value = relative_anchor(emb, ref)
    torch.testing.assert_close(relative_anchor(10 * emb, 10 * ref), value)
    expected = (((emb - ref) ** 2).sum(1) / (ref**2).sum(1)).mean()
    torch.testing.assert_close(value, expected)
