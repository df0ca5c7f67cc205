"""Feature-squeezing signals of the attack score (`median`, `bits`; issue 15): the squeezers themselves, their
NumPy twins on the served path, the gradient an adaptive attacker gets through them, and their settings."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from clipshield.models.attack_score import AttackScoreConfig, SignalExtractor, bit_squeeze, median_squeeze
from clipshield.service import attack_score_np

from .test_attack_score import SIDE, attacked, toy_setup


def test_median_keeps_flat_regions_and_removes_an_isolated_spike():
    images = torch.full((1, 3, 9, 9), 0.25)
    images[0, 1, 4:7, 2:8] = 0.75  # a 3-pixel-high bar: a 3x3 median keeps its inside
    spiked = images.clone()
    spiked[0, 0, 1, 1] = 1.0  # one pixel of 'perturbation' in a flat region
    out = median_squeeze(spiked, 3)
    assert out.shape == images.shape
    assert out[0, 0, 1, 1] == pytest.approx(0.25)  # the spike is gone
    assert torch.equal(out[0, 1, 5, 3:7], images[0, 1, 5, 3:7])  # the bar's inside is kept
    assert torch.equal(median_squeeze(images[:, :, :3, :3].clone().fill_(0.5), 3), torch.full((1, 3, 3, 3), 0.5))


@pytest.mark.parametrize("size", [3, 5])
def test_numpy_median_is_the_torch_median(size):
    images = torch.rand(2, 3, 11, 13, generator=torch.Generator().manual_seed(size))
    np.testing.assert_array_equal(attack_score_np.median_squeeze(images.numpy(), size), median_squeeze(images, size).numpy())


def test_bit_squeeze_levels_numpy_twin_and_straight_through_gradient():
    images = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0), requires_grad=True)
    out = bit_squeeze(images, 2)
    assert set((out.detach() * 3).round().unique().tolist()) <= {0.0, 1.0, 2.0, 3.0}  # 2 bits: 4 levels
    assert (out.detach() - images.detach()).abs().max() <= 1 / 6 + 1e-6  # half a level at most
    np.testing.assert_array_equal(attack_score_np.bit_squeeze(images.detach().numpy(), 2), out.detach().numpy())
    out.sum().backward()
    assert torch.equal(images.grad, torch.ones_like(images))  # BPDA: identity backward, not round()'s zero


def test_median_signal_gives_an_adaptive_attacker_a_gradient():
    clf, images, _ = toy_setup(4)
    extractor = SignalExtractor(clf, torch.ones(8), AttackScoreConfig(signals=("median", "bits")))
    x = images.clone().requires_grad_(True)
    extractor(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_squeeze_shifts_are_larger_on_attacked_images_of_a_smooth_toy_world():
    """Clean toy images are smooth (constant 2x2 blocks upsampled), PGD adds pixel-level noise: the median
    shift separates them (the mechanism the signal relies on, not a calibration claim)."""
    clf, _, _ = toy_setup(4)
    coarse = torch.rand(48, 3, SIDE // 2, SIDE // 2, generator=torch.Generator().manual_seed(3)) * 0.6 + 0.2
    smooth = torch.nn.functional.interpolate(coarse, scale_factor=2, mode="nearest")
    labels = clf(smooth).argmax(-1)
    adv = attacked(clf, smooth, labels, eps=0.05)
    extractor = SignalExtractor(clf, torch.ones(8), AttackScoreConfig(signals=("median",)))
    with torch.no_grad():
        clean_shift, adv_shift = extractor(smooth)[:, 0], extractor(adv)[:, 0]
    assert adv_shift.mean() > 2 * clean_shift.mean()


def test_even_median_window_and_out_of_range_bits_are_refused_naming_the_allowed_values():
    with pytest.raises(ValidationError, match="odd"):
        AttackScoreConfig(median_size=4)
    with pytest.raises(ValidationError, match="less than or equal to 8"):
        AttackScoreConfig(bit_depth=9)


def test_tiled_adaptive_attack_perturbs_whole_tiles_within_the_budget():
    """`block` = 3 on 6x6 toy images: every 3x3 tile moves by one value per channel, |delta| <= eps; a tile
    grid that does not divide the image is cut at the border; block 0 is refused."""
    from clipshield.attacks.adaptive_defences import ScoreAwarePGD

    from .test_attack_score import scorer_for

    clf, images, labels = toy_setup(24)
    scorer = scorer_for(clf, images[:16], labels[:16], signals=("median", "margin"))
    x, y = images[16:], labels[16:]
    for block in (3, 4):
        adv = ScoreAwarePGD(
            clf, scorer, eps=0.03, lam=1.0, steps=5, penalty="hinge", block=block, generator=torch.Generator().manual_seed(0)
        )(x, y)
        delta = adv - x  # toy pixels lie in [0.2, 0.8]: no box clamp
        assert delta.abs().max() <= 0.03 + 1e-6 and delta.abs().max() > 0.01
        tiles = delta[..., :block, :block].flatten(2)
        assert torch.allclose(tiles, tiles[..., :1].expand_as(tiles), atol=1e-7)
    smooth = ScoreAwarePGD(clf, scorer, eps=0.03, steps=5, block=3, upsample="bilinear", generator=torch.Generator().manual_seed(0))(x, y)
    delta = smooth - x
    assert delta.abs().max() <= 0.03 + 1e-6  # interpolation is a convex combination: the budget holds
    tiles = delta[..., :3, :3].flatten(2)
    assert not torch.allclose(tiles, tiles[..., :1].expand_as(tiles), atol=1e-4)  # not constant tiles
    with pytest.raises(ValueError, match="block >= 1"):
        ScoreAwarePGD(clf, scorer, eps=0.03, block=0)
    with pytest.raises(ValueError, match="known: nearest, bilinear"):
        ScoreAwarePGD(clf, scorer, eps=0.03, block=2, upsample="bicubic")  # type: ignore[arg-type]


def test_pixel_median_needs_no_encoder_pass_and_separates_attacked_smooth_images():
    """Issue 26: `pixel_median` reads the pixels only (the served score makes no encoder call for it, nor for
    anchor and margin), is zero on flat images and larger on PGD images of a smooth toy world; its torch
    twin gives an adaptive attacker a gradient."""
    from clipshield.service.attack_score_config import ScoreParams

    clf, _, _ = toy_setup(4)
    coarse = torch.rand(48, 3, SIDE // 2, SIDE // 2, generator=torch.Generator().manual_seed(3)) * 0.6 + 0.2
    smooth = torch.nn.functional.interpolate(coarse, scale_factor=2, mode="nearest")
    adv = attacked(clf, smooth, clf(smooth).argmax(-1), eps=0.05)
    calls: list[int] = []

    def encode(pixels: np.ndarray) -> np.ndarray:
        calls.append(len(pixels))
        return clf.model.encode_image(torch.from_numpy(pixels)).detach().numpy()

    cfg = AttackScoreConfig(signals=("anchor", "margin", "pixel_median"))
    params = ScoreParams(
        signals=cfg.signals, mean=(0.0,) * 3, std=(1.0,) * 3, weights=(0.0, 0.0, 1.0), bias=0.0, threshold=0.0, target_fpr=0.05,
        dataset="toy", n_calibration=1,
    )  # fmt: skip
    scorer = attack_score_np.NumpyAttackScorer(cfg, params, encode, clf.head.numpy(), np.ones(8, np.float32), clf.scale)
    x_clean, x_adv = smooth.numpy(), adv.detach().numpy()
    clean, attacked_scores = scorer.score(x_clean, encode(x_clean)), scorer.score(x_adv, encode(x_adv))
    assert calls == [48, 48]  # only the two calls made above: the score itself encoded nothing
    assert attacked_scores.mean() > 2 * clean.mean()
    flat = np.full((2, 3, SIDE, SIDE), 0.4, np.float32)
    assert np.array_equal(attack_score_np.pixel_median(flat, 3), np.zeros(2))
    x = smooth[:4].clone().requires_grad_(True)
    SignalExtractor(clf, torch.ones(8), cfg)(x)[:, 2].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
