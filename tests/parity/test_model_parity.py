"""Our loading path + PixelCLIP reproduce the goldens' embeddings and tokens (goldens README section 5)."""

from __future__ import annotations

import torch

from clipshield.models.zero_shot import encode_prompts, format_prompts

from .conftest import ROUNDING_ATOL, load_golden, stepped_copy


def test_text_embeddings_match_goldens(goldens, frozen_model, golden_inputs):
    tga = load_golden(goldens, "tga_zsr.npz")
    prompts = format_prompts(golden_inputs["classnames"], golden_inputs["template"])
    ours = encode_prompts(frozen_model, prompts)
    assert ours.shape == tga["text_features_all"].shape
    torch.testing.assert_close(ours, tga["text_features_all"], atol=1e-5, rtol=0)


def test_frozen_image_embeddings_match_goldens(goldens, frozen_model, golden_inputs):
    fare = load_golden(goldens, "fare.npz")
    clipure = load_golden(goldens, "clipure_cos.npz")
    with torch.no_grad():
        emb = frozen_model.encode_image(golden_inputs["images"])
        unit = frozen_model.encode_image(golden_inputs["images"], normalize=True)
    torch.testing.assert_close(emb, fare["embedding_orig_clean"], atol=1e-5, rtol=0)
    torch.testing.assert_close(unit, clipure["image_embed_normalized"], atol=1e-5, rtol=0)


def test_target_tokens_match_goldens(goldens, target_model, golden_inputs):
    tga = load_golden(goldens, "tga_zsr.npz")
    fare = load_golden(goldens, "fare.npz")
    adv = golden_inputs["images"] + golden_inputs["delta"]
    with torch.no_grad():
        pooled, tokens = target_model.encode_image_with_tokens(adv)
    torch.testing.assert_close(pooled, fare["embedding_adv_target"], atol=1e-5, rtol=0)
    # the class token computed two ways agrees to float32 rounding, not bit for bit (goldens README 6)
    torch.testing.assert_close(tokens[:, 0], pooled, atol=ROUNDING_ATOL, rtol=ROUNDING_ATOL)
    # the goldens' tokens were captured after the reference's SGD step (see stepped_copy)
    grads = {k[len("grad/") :]: v for k, v in tga.items() if k.startswith("grad/")}
    stepped = stepped_copy(target_model, grads, float(tga["lr_at_step0"]))
    with torch.no_grad():
        _, stepped_tokens = stepped.encode_image_with_tokens(adv)
    torch.testing.assert_close(stepped_tokens, tga["image_tokens_adv_target"], atol=1e-5, rtol=0)


def test_logit_scale_matches_goldens(goldens, frozen_model):
    clipure = load_golden(goldens, "clipure_cos.npz")
    assert abs(frozen_model.logit_scale - float(clipure["logit_scale_exp"])) < 1e-4
