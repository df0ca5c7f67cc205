"""The frozen model's remembered clean outputs: same losses as recomputing, fewer frozen forwards."""

from __future__ import annotations

import pytest
import torch

from clipshield.models.checkpoint import load_weights, save_checkpoint
from clipshield.models.factory import from_record
from clipshield.training.finetune import FinetuneConfig, finetune
from clipshield.training.methods import AttackBudget, FrozenBatch, FrozenReference, LossInputs, TextHeads, get_method
from clipshield.training.pretrain import miniworld_record
from clipshield.training.train_state import STATE_NAME

EPS = 4 / 255


class ForwardCounter:
    """Counts images through a model's image tower (a forward hook on `visual`)."""

    def __init__(self, model) -> None:
        self.images = 0
        model.visual.register_forward_hook(lambda _m, args, _out: self._add(args[0].shape[0]))

    def _add(self, n: int) -> None:
        self.images += n


@pytest.fixture()
def tiny():
    torch.manual_seed(0)
    target = from_record(miniworld_record())
    frozen = from_record(miniworld_record())
    frozen.load_state_dict(target.state_dict())
    with torch.no_grad():
        for p in target.visual.parameters():
            p.add_(0.05 * torch.randn_like(p))
    g = torch.Generator().manual_seed(1)
    images = torch.rand(10, 3, 32, 32, generator=g)
    labels = torch.randint(0, 5, (10,), generator=g)
    dim = target.clip.text_projection.shape[1]
    classes = torch.nn.functional.normalize(torch.randn(5, dim, generator=g), dim=-1)
    negatives = torch.nn.functional.normalize(torch.randn(5, dim, generator=g), dim=-1)
    return target, frozen.eval(), images, labels, TextHeads(classes, negatives)


@pytest.mark.parametrize("name", ["tga-zsr", "comp-tga"])
def test_attention_losses_read_frozen_maps_back_unchanged(tiny, name):
    target, frozen, images, labels, heads = tiny
    method = get_method(name)
    params = method.params()
    adv = (images + EPS * torch.sign(torch.randn_like(images))).clamp(0, 1)
    direct = method.loss(LossInputs(target, images, labels, heads, adv, FrozenBatch(frozen)), params)

    counter = ForwardCounter(frozen)
    ref = FrozenReference(frozen, dataset_size=50)
    idx = torch.tensor([3, 7, 11, 19, 23, 29, 31, 37, 41, 43])
    first = method.loss(LossInputs(target, images, labels, heads, adv, ref.for_batch(idx)), params)
    assert counter.images == 10 and ref.hits == 0
    # the same images in a later epoch: nothing recomputed
    second = method.loss(LossInputs(target, images, labels, heads, adv, ref.for_batch(idx)), params)
    assert counter.images == 10 and ref.hits == 10
    for out in (first, second):
        torch.testing.assert_close(out.total, direct.total, rtol=0, atol=1e-6)
        for key in direct.terms:
            torch.testing.assert_close(out.terms[key], direct.terms[key], rtol=0, atol=1e-6)
    assert torch.equal(first.outputs["map_clean_frozen"], second.outputs["map_clean_frozen"])
    assert torch.equal(first.total, second.total)


def test_partly_seen_batch_computes_only_new_images(tiny):
    target, frozen, images, labels, heads = tiny
    method = get_method("tga-zsr")
    params = method.params()
    adv = images.flip(0)
    counter = ForwardCounter(frozen)
    ref = FrozenReference(frozen, dataset_size=20)
    method.loss(LossInputs(target, images[:5], labels[:5], heads, adv[:5], ref.for_batch(torch.arange(5))), params)
    # 0..4 remembered, 5..9 new
    mixed = method.loss(LossInputs(target, images, labels, heads, adv, ref.for_batch(torch.arange(10))), params)
    assert counter.images == 10 and ref.hits == 5 and ref.computed == 10
    direct = method.loss(LossInputs(target, images, labels, heads, adv, FrozenBatch(frozen)), params)
    torch.testing.assert_close(mixed.outputs["map_clean_frozen"], direct.outputs["map_clean_frozen"], rtol=0, atol=1e-6)


def test_fare_computes_the_clean_embedding_once_per_step(tiny):
    target, frozen, images, labels, heads = tiny
    method = get_method("fare")
    params = method.params()
    counter = ForwardCounter(frozen)
    ref = FrozenReference(frozen)  # no data set: shared within the step only
    for step in range(2):
        batch = LossInputs(target, images, labels, heads, frozen=ref.for_batch(None))
        adv = method.adversary.perturb(batch, params, AttackBudget(EPS, EPS / 4, 2), torch.Generator().manual_seed(step))
        method.loss(batch.with_adv(adv), params)
        assert counter.images == 10 * (step + 1), "attack and loss must share f_phi(x); each step computes it anew"


def test_budget_and_state_round_trip(tiny):
    _, frozen, images, _, _ = tiny
    embed = lambda model, rows: model.encode_image(images[rows])  # noqa: E731
    over = FrozenReference(frozen, dataset_size=100, budget_mb=0)
    for _ in range(2):
        over.for_batch(torch.arange(10)).clean("embedding", images, embed)
    assert over.computed == 20 and over.hits == 0 and over.state_dict() == {}

    ref = FrozenReference(frozen, dataset_size=100)
    want = ref.for_batch(torch.arange(10, 20)).clean("embedding", images, embed)
    state = ref.state_dict()
    assert int(state["embedding.filled"].sum()) == 10
    restored = FrozenReference(frozen, dataset_size=100)
    restored.load_state_dict(state)
    assert torch.equal(restored.for_batch(torch.arange(10, 20)).clean("embedding", images, embed), want) and restored.computed == 0
    with pytest.raises(ValueError, match="bound to 3 indices but given 10 images"):
        restored.for_batch(torch.arange(3)).clean("embedding", images, embed)


def test_finetune_with_and_without_memory_agree(tmp_path):
    torch.manual_seed(0)
    model_dir = tmp_path / "model"
    record = miniworld_record()
    save_checkpoint(model_dir, record, from_record(record).clip.state_dict())
    runs = {}
    for mb in (1024.0, 0.0):  # 16 images, batch 8: steps 2-3 are the second epoch
        out = tmp_path / f"mb{mb:g}"
        finetune(
            FinetuneConfig(
                method="tga-zsr",
                model=str(model_dir),
                data_limit=16,
                batch_size=8,
                steps=4,
                warmup=1,
                eps=EPS,
                output=out,
                threads=1,
                frozen_cache_mb=mb,
            )
        )
        runs[mb] = load_weights(out / "final" / "model.safetensors")
    from safetensors import safe_open

    with safe_open(str(tmp_path / "mb1024" / "state" / STATE_NAME), "pt") as fh:
        cached = [k for k in fh.keys() if k.startswith("cache.")]  # noqa: SIM118 - safe_open is not iterable
    assert sorted(cached) == ["cache.tga_grids.filled", "cache.tga_grids.values"]
    for key, value in runs[1024.0].items():
        torch.testing.assert_close(value, runs[0.0][key], rtol=0, atol=1e-5)
