"""Zero-shot head: prompt-ensemble maths, caching, and the classifier's logits."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from clipshield.models.zero_shot import TextHeadCache, ZeroShotClassifier, build_text_head, encode_prompts


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


def test_numpy_and_torch_scaled_cosine_logits_agree():
    """The two implementations (numpy for serving, torch with gradients for training) on un-normalised embeddings."""
    import numpy as np

    from clipshield.models.zero_shot import cosine_logits
    from clipshield.service.heads import ensemble
    from clipshield.service.purify_np import logits

    gen = torch.Generator().manual_seed(0)
    emb = torch.randn(5, 48, generator=gen) * 3.0
    head = torch.from_numpy(ensemble(torch.randn(4 * 3, 48, generator=gen).numpy(), 4))
    ours = logits(emb.numpy(), head.numpy(), 100.0)
    ref = cosine_logits(emb, head, 100.0)
    assert ours.dtype == np.float32 and ours.shape == (5, 4)
    np.testing.assert_allclose(ours, ref.numpy(), atol=1e-4, rtol=0)  # values up to 100: a few float32 ulps
    emb.requires_grad_(True)
    cosine_logits(emb, head, 100.0).sum().backward()  # the torch one stays differentiable (attacks need it)
    assert emb.grad is not None and float(emb.grad.abs().sum()) > 0


def test_served_head_equals_the_training_head(miniworld_model, tmp_path):
    """Custom labels: the server's head (ONNX text encoder + numpy ensemble) == `build_text_head` (torch tower)."""
    from clipshield.export import export_model
    from clipshield.service.inference import ClipshieldService

    service = ClipshieldService.from_folder(export_model(miniworld_model, tmp_path / "bundle"))
    names = ["red star", "blue circle", "green square"]
    served = service.encode_labels(names)
    trained = build_text_head(miniworld_model, names, list(service.labels.templates))
    torch.testing.assert_close(torch.from_numpy(served), trained, atol=1e-4, rtol=0)  # the ONNX parity bound


def test_head_cache_is_an_lru():
    import numpy as np

    from clipshield.service.heads import HeadCache

    cache: HeadCache[np.ndarray] = HeadCache(capacity=2)
    built = []
    for key in ["a", "b", "a", "c", "b"]:  # "a" is refreshed before "c" arrives, so "b" is evicted
        cache.get_or_build(key, lambda key=key: built.append(key) or np.zeros(1))
    assert built == ["a", "b", "c", "b"] and len(cache) == 2 and cache.hits == 1
