"""Zero-shot head: prompt-ensemble maths, caching, and the classifier's logits."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from service.zero_shot import TextHeadCache, ZeroShotClassifier, build_text_head, encode_prompts


def test_head_is_renormalised_mean_of_unit_prompt_embeddings(miniworld_model):
    names, templates = ["red star", "blue circle"], ["a photo of a {}.", "a {}."]
    head = build_text_head(miniworld_model, names, templates)
    per = encode_prompts(miniworld_model, [t.format(n) for n in names for t in templates]).view(2, 2, -1)
    torch.testing.assert_close(head, F.normalize(per.mean(1), dim=-1))
    torch.testing.assert_close(head.norm(dim=-1), torch.ones(2))


def test_cache_builds_once_per_label_set(miniworld_model):
    cache = TextHeadCache(capacity=2)
    a = cache.get_or_build(miniworld_model, "m", ["red star"], ["a {}."])
    b = cache.get_or_build(miniworld_model, "m", ["red star"], ["a {}."])
    assert a is b and cache.hits == 1 and cache.misses == 1
    cache.get_or_build(miniworld_model, "m", ["x"], ["a {}."])
    cache.get_or_build(miniworld_model, "m", ["blue circle"], ["a {}."])
    cache.get_or_build(miniworld_model, "m", ["red star"], ["a {}."])
    assert cache.misses == 4


def test_classifier_logits_are_scaled_cosines(miniworld_model):
    head = build_text_head(miniworld_model, ["red star", "blue circle"], ["a {}."])
    clf = ZeroShotClassifier(miniworld_model, head)
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        emb = miniworld_model.encode_image(x, normalize=True)
        torch.testing.assert_close(clf(x), miniworld_model.logit_scale * emb @ head.t())
