"""Pre-training is deterministic for a seed and thread count, and resume equals an uninterrupted run."""

from __future__ import annotations

import pytest
import torch

from clipshield.training.pretrain import PretrainConfig, multi_positive_loss, pretrain

SMALL = dict(batch_size=16, pool_size=256, warmup=2, lr=1e-3, threads=2)


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.clip.state_dict().items()}


def test_same_seed_same_weights_and_resume(tmp_path):
    a = _weights(pretrain(PretrainConfig(output=tmp_path / "a", steps=6, **SMALL)))
    b = _weights(pretrain(PretrainConfig(output=tmp_path / "b", steps=6, **SMALL)))
    assert all(torch.equal(a[k], b[k]) for k in a)

    # interrupted after 3 steps (state written at step 3), then resumed to 6
    pretrain(PretrainConfig(output=tmp_path / "c", steps=3, **SMALL))
    c = _weights(pretrain(PretrainConfig(output=tmp_path / "c", steps=6, resume=True, **SMALL)))
    assert all(torch.equal(a[k], c[k]) for k in a)

    d = _weights(pretrain(PretrainConfig(output=tmp_path / "d", steps=6, seed=1, **SMALL)))
    assert any(not torch.equal(a[k], d[k]) for k in a)


def test_multi_positive_loss_reduces_to_clip_loss_without_shared_positives():
    logits = torch.randn(5, 5)
    eye = torch.eye(5, dtype=torch.bool)
    expected = 0.5 * (
        torch.nn.functional.cross_entropy(logits, torch.arange(5)) + torch.nn.functional.cross_entropy(logits.t(), torch.arange(5))
    )
    torch.testing.assert_close(multi_positive_loss(logits, eye), expected)


def test_multi_positive_loss_does_not_push_down_true_matches():
    """Caption 0 ("a red object") also describes image 1: CLIP's loss treats that pair as a negative."""
    match = torch.tensor([[True, False], [True, True]])
    logits = torch.tensor([[5.0, -5.0], [5.0, 5.0]], requires_grad=True)
    (g_multi,) = torch.autograd.grad(multi_positive_loss(logits, match), logits)
    (g_clip,) = torch.autograd.grad(multi_positive_loss(logits, torch.eye(2, dtype=torch.bool)), logits)
    assert g_clip[1, 0] > 1e-2  # plain CLIP loss lowers the true-but-off-diagonal pair
    assert abs(float(g_multi[1, 0])) < 1e-3  # the multi-positive target leaves it alone


def test_init_from_teacher_needs_a_teacher_before_any_work():
    from clipshield.service.errors import ConfigError

    with pytest.raises(ConfigError, match="needs --teacher"):
        PretrainConfig(world="miniworld224", init_from_teacher=True)
    assert PretrainConfig(world="miniworld224", teacher="miniworld", init_from_teacher=True).init_from_teacher
