"""CLIPure-Cos against the reference goldens (clipure_cos.npz), and batch independence of per-sample mode."""

from __future__ import annotations

import torch
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

from clipshield.models.purify import PurifyConfig, blank_anchor, purify_embeddings
from clipshield.models.zero_shot import build_text_head

from .conftest import ROUNDING_ATOL, load_golden

TEMPLATES = [t("{}") for t in OPENAI_IMAGENET_TEMPLATES]


def test_class_embeddings_and_anchor(goldens, frozen_model, golden_inputs):
    g = load_golden(goldens, "clipure_cos.npz")
    head = build_text_head(frozen_model, golden_inputs["classnames"], TEMPLATES)
    torch.testing.assert_close(head.t(), g["class_text_embeddings"], atol=1e-6, rtol=0)
    torch.testing.assert_close(blank_anchor(frozen_model, TEMPLATES), g["blank_anchor"], atol=1e-6, rtol=0)


def test_batch_mode_trajectory_matches_reference(goldens):
    g = load_golden(goldens, "clipure_cos.npz")
    start, anchor = g["image_embed_normalized"], g["blank_anchor"]
    traj = g["purified_trajectory_batch"]
    for k in range(traj.shape[0]):
        out = purify_embeddings(start, anchor, PurifyConfig(steps=k, step_size=30.0, mode="batch"))
        torch.testing.assert_close(out, traj[k], atol=1e-5, rtol=0)
    logits = float(g["logit_scale_exp"]) * out @ g["class_text_embeddings"]
    torch.testing.assert_close(logits, g["logits_batch"], atol=1e-3, rtol=0)


def _together_and_alone(start: torch.Tensor, anchor: torch.Tensor, cfg: PurifyConfig) -> tuple[torch.Tensor, torch.Tensor]:
    together = purify_embeddings(start, anchor, cfg)
    alone = torch.cat([purify_embeddings(start[i : i + 1], anchor, cfg) for i in range(len(start))])
    return together, alone


def test_single_image_matches_reference_and_per_sample_is_batch_independent(goldens):
    """torch promises no batch invariance, so together vs alone agree to rounding, not bit for bit.

    One step keeps rounding at float32 level; ten steps of size 30 amplify one input ulp ~100x
    (measured 8e-6 on the public set), so the ten-step check uses the README's purified-vector
    tolerance (1e-3), far below the batch-coupled mode's difference on the public set (0.78).
    """
    g = load_golden(goldens, "clipure_cos.npz")
    start, anchor = g["image_embed_normalized"], g["blank_anchor"]
    together, alone = _together_and_alone(start, anchor, PurifyConfig(steps=1, step_size=30.0, mode="per_sample"))
    torch.testing.assert_close(together, alone, atol=ROUNDING_ATOL, rtol=ROUNDING_ATOL)
    cfg = PurifyConfig(steps=10, step_size=30.0, mode="per_sample")
    together, alone = _together_and_alone(start, anchor, cfg)
    torch.testing.assert_close(together, alone, atol=1e-3, rtol=0)
    torch.testing.assert_close(alone, g["purified_single"], atol=1e-3, rtol=0)
    # the released batch mode is batch-coupled: it differs from one-at-a-time purification as much
    # as the reference's own batch and single runs differ (zero for a batch of one)
    coupled = purify_embeddings(start, anchor, PurifyConfig(steps=10, step_size=30.0, mode="batch"))
    reference_gap = float((g["purified_batch"] - g["purified_single"]).abs().max())
    assert abs(float((coupled - alone).abs().max()) - reference_gap) <= 2e-3
