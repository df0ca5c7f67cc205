"""The mini world: deterministic rendering, disjoint seeds, Latin-square hold-outs, captions that respect them."""

from __future__ import annotations

import numpy as np
import pytest

from clipshield.datasets.miniworld.captions import COLOR, SHAPE, caption_for, match_matrix
from clipshield.datasets.miniworld.dataset import MiniWorldClassification, MiniWorldFinetune, MiniWorldTask, image_seed, pretraining_specs
from clipshield.datasets.miniworld.render import ImageSpec, render
from clipshield.datasets.miniworld.world import COLORS, DOMAINS, SHAPES, Split, combos, holdout_kind


def test_render_is_deterministic_and_seed_sensitive():
    spec = ImageSpec(shape=4, color=2, size=1, domain=1, background=0, seed=123)
    a, b = render(spec), render(spec)
    assert a.dtype == np.uint8 and a.shape == (32, 32, 3)
    assert np.array_equal(a, b)
    other = render(ImageSpec(shape=4, color=2, size=1, domain=1, background=0, seed=124))
    assert not np.array_equal(a, other)


def test_domains_render_differently():
    imgs = [render(ImageSpec(0, 0, 1, d, 1, 7)).astype(int) for d in range(len(DOMAINS))]
    for i in range(len(imgs)):
        for j in range(i + 1, len(imgs)):
            assert np.abs(imgs[i] - imgs[j]).mean() > 2


def test_holdouts_form_a_latin_square():
    for kind in ("heldout_image", "heldout_caption"):
        pairs = combos(kind)
        assert len(pairs) == len(SHAPES)
        assert sorted(s for s, _ in pairs) == list(range(len(SHAPES)))
        assert sorted(c for _, c in pairs) == list(range(len(COLORS)))
    assert len(combos("seen")) == len(SHAPES) * len(COLORS) - 2 * len(SHAPES)


def test_pretraining_never_renders_image_heldout_combos():
    specs = pretraining_specs(2000)
    assert all(holdout_kind(s.shape, s.color) != "heldout_image" for s in specs)
    assert any(holdout_kind(s.shape, s.color) == "heldout_caption" for s in specs)


def test_caption_holdout_combos_are_never_captioned_jointly():
    rng = np.random.default_rng(0)
    for shape, color in combos("heldout_caption"):
        for _ in range(200):
            text, mentions = caption_for(shape, color, 0, 0, rng)
            assert not (mentions[SHAPE] >= 0 and mentions[COLOR] >= 0), text
            assert not (SHAPES[shape] in text.split() and COLORS[color] in text.split()), text


def test_captions_mention_what_they_say():
    rng = np.random.default_rng(1)
    for _ in range(300):
        s, c = int(rng.integers(8)), int(rng.integers(8))
        text, m = caption_for(s, c, 1, 2, rng)
        assert (m[SHAPE] >= 0) == (SHAPES[s] in text.split())
        assert (m[COLOR] >= 0) == (COLORS[c] in text.split())


def test_match_matrix_is_multi_positive():
    attrs = np.array([[0, 1, 0, 0], [0, 2, 1, 0], [3, 1, 0, 1]])
    mentions = np.array([[0, -1, -1, -1], [-1, 1, -1, -1], [3, 1, -1, -1]])
    m = match_matrix(attrs, mentions)
    assert m.tolist() == [[True, True, False], [True, False, False], [False, True, True]]


def test_eval_and_train_seeds_are_disjoint():
    train = {image_seed(0, Split.TRAIN, i) for i in range(5000)}
    test = {image_seed(0, Split.TEST, i) for i in range(5000)}
    assert not train & test


@pytest.mark.parametrize("split", ["seen", "heldout_image", "heldout_caption"])
def test_classification_sets_draw_from_their_split(split):
    ds = MiniWorldClassification(MiniWorldTask("plain", "color_shape", split, n=64))
    assert len(ds.classnames) == 64
    assert all(holdout_kind(s.shape, s.color) == split for s in ds.specs)
    assert all(ds.classnames[y] == f"{COLORS[s.color]} {SHAPES[s.shape]}" for s, y in zip(ds.specs, ds.labels))
    x = ds.images()
    assert x.shape == (64, 3, 32, 32) and 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    again = MiniWorldClassification(MiniWorldTask("plain", "color_shape", split, n=64))
    assert (again.images() == x).all()


def test_finetune_set_is_plain_seen_48_classes():
    ds = MiniWorldFinetune(n=128)
    assert len(ds.classnames) == 48
    assert all(s.domain == DOMAINS.index("plain") for s in ds.specs)
    image, label = ds[0]
    assert image.shape == (3, 32, 32) and 0 <= int(label) < 48
