"""Attack score, its calibration, detection metrics and the adaptive attacks on toy models (issue 15)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from clipshield.attacks.adaptive_defences import ScoreAwarePGD, StraightThroughTTC
from clipshield.attacks.pgd import PGD
from clipshield.models.attack_score import AttackScoreConfig, SignalExtractor, calibrate_scorer
from clipshield.models.ttc import TTCClassifier, TTCConfig
from clipshield.models.zero_shot import ZeroShotClassifier
from clipshield.service.detection_metrics import auroc
from clipshield.service.errors import ConfigError

SIDE = 6


class ToyEncoder(nn.Module):
    """Linear 'image tower' over [0, 1] pixels [B, 3, SIDE, SIDE] -> [B, 8], with a logit scale like PixelCLIP."""

    logit_scale = 10.0

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.lin = nn.Linear(3 * SIDE * SIDE, 8)
        with torch.no_grad():
            self.lin.weight.copy_(torch.randn(8, 3 * SIDE * SIDE, generator=g) * 0.3)
            self.lin.bias.copy_(torch.randn(8, generator=g))

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.lin(images.flatten(1))


def toy_setup(n: int, seed: int = 0):
    """Two-class toy task whose clean images are classified with a clear margin."""
    enc = ToyEncoder()
    head = F.normalize(torch.randn(2, 8, generator=torch.Generator().manual_seed(1)), dim=-1)
    clf = ZeroShotClassifier(enc, head).eval()  # type: ignore[arg-type]
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(4 * n, 3, SIDE, SIDE, generator=g) * 0.6 + 0.2
    with torch.no_grad():
        logits = clf(images)
    top2 = logits.topk(2, dim=-1).values
    keep = (top2[:, 0] - top2[:, 1]).argsort(descending=True)[:n]  # confidently classified images only,
    keep = keep[torch.randperm(n, generator=g)]  # in random order, so that any split is exchangeable
    return clf, images[keep], logits[keep].argmax(-1)


def attacked(clf, images, labels, eps=0.02, seed=0):
    return PGD(clf, eps=eps, alpha=eps / 4, steps=10, generator=torch.Generator().manual_seed(seed))(images, labels)


def scorer_for(clf, images, labels, signals=("anchor", "margin"), fpr=0.1):
    cfg = AttackScoreConfig(signals=signals, n_noise=2, noise_eps=0.01)
    extractor = SignalExtractor(clf, torch.ones(8), cfg)
    return calibrate_scorer(extractor, images, attacked(clf, images, labels), fpr, "toy")


def test_score_is_higher_for_pgd_images_than_clean_ones_on_held_out_images():
    clf, images, labels = toy_setup(80)
    scorer = scorer_for(clf, images[:40], labels[:40], signals=("tau", "anchor", "margin"))
    clean, y = images[40:], labels[40:]
    adv = attacked(clf, clean, y, seed=1)
    with torch.no_grad():
        s_clean = scorer(clean, torch.Generator().manual_seed(5))
        s_adv = scorer(adv, torch.Generator().manual_seed(5))
    assert auroc(s_clean, s_adv) > 0.9, (s_clean.mean(), s_adv.mean())
    assert float(scorer.flag(s_adv).float().mean()) > float(scorer.flag(s_clean).float().mean()) + 0.5


@pytest.mark.parametrize("fpr", [0.05, 0.1, 0.25])
def test_calibration_hits_the_target_fpr_on_the_calibration_set(fpr):
    clf, images, labels = toy_setup(100)
    scorer = scorer_for(clf, images, labels, fpr=fpr)
    with torch.no_grad():
        flagged = scorer.flag(scorer(images)).float().mean()
    assert abs(float(flagged) - fpr) <= 1 / 100 + 1e-9
    assert scorer.params.n_calibration == 100 and scorer.params.dataset == "toy"


def test_unknown_signal_and_agreement_without_reference_are_config_errors():
    clf, _, _ = toy_setup(4)
    with pytest.raises(ConfigError, match="known"):
        SignalExtractor(clf, torch.ones(8), AttackScoreConfig(signals=("entropy",)))
    with pytest.raises(ConfigError, match="original"):
        SignalExtractor(clf, torch.ones(8), AttackScoreConfig(signals=("agreement",)))
    ref = SignalExtractor(clf, torch.ones(8), AttackScoreConfig(signals=("agreement",)), reference=clf.model)
    assert torch.allclose(ref(torch.rand(3, 3, SIDE, SIDE)), torch.ones(3, 1), atol=1e-5)  # same encoder: cosine 1


def test_adaptive_loss_includes_the_score_penalty_and_its_gradient():
    clf, images, labels = toy_setup(40)
    scorer = scorer_for(clf, images[:30], labels[:30])
    x, y = images[30:], labels[30:]
    plain = ScoreAwarePGD(clf, scorer, eps=0.02, lam=0.0)
    aware = ScoreAwarePGD(clf, scorer, eps=0.02, lam=3.0)
    leaf = x.clone().requires_grad_(True)
    with torch.no_grad():
        expected = F.cross_entropy(clf(x), y) - 3.0 * scorer(x).mean()
    assert float(aware.objective(x, y).detach()) == pytest.approx(float(expected), rel=1e-5)
    (g_aware,) = torch.autograd.grad(aware.objective(leaf, y), leaf)
    (g_plain,) = torch.autograd.grad(plain.objective(leaf, y), leaf)
    (g_score,) = torch.autograd.grad(scorer(leaf).mean(), leaf)
    assert torch.allclose(g_plain - g_aware, 3.0 * g_score, atol=1e-5) and g_score.abs().sum() > 0
    adv_plain = PGD(clf, eps=0.02, alpha=0.005, steps=10, generator=torch.Generator().manual_seed(0))(x, y)
    adv_aware = ScoreAwarePGD(clf, scorer, eps=0.02, lam=3.0, alpha=0.005, steps=10, generator=torch.Generator().manual_seed(0))(x, y)
    with torch.no_grad():
        assert scorer(adv_aware).mean() < scorer(adv_plain).mean()  # the penalty steers the attack away from the flag


def toy_ttc():
    clf, images, labels = toy_setup(12)
    cfg = TTCConfig(eps=0.02, step_size=0.005)
    return TTCClassifier(clf.model, clf.head, cfg), images, labels  # type: ignore[arg-type]


def test_bpda_through_ttc_returns_images_in_the_eps_ball():
    ttc, images, labels = toy_ttc()
    eps = 0.03
    surrogate = StraightThroughTTC(ttc, eot=2, generator=torch.Generator().manual_seed(3))
    adv = PGD(surrogate, eps=eps, alpha=eps / 4, steps=5, generator=torch.Generator().manual_seed(0))(images, labels)
    assert adv.shape == images.shape
    assert float((adv - images).abs().max()) <= eps + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    assert float((adv - images).abs().max()) > eps / 2  # it moved


def test_straight_through_ttc_forward_is_ttc_and_its_gradient_is_not_masked():
    ttc, images, _ = toy_ttc()
    surrogate = StraightThroughTTC(ttc, eot=1, generator=torch.Generator().manual_seed(7))
    reference = TTCClassifier(ttc.model, ttc.head, ttc.cfg, generator=torch.Generator().manual_seed(7))
    leaf = images.clone().requires_grad_(True)
    logits = surrogate(leaf)
    with torch.no_grad():
        assert torch.allclose(logits, reference(images), atol=1e-5)
    (g,) = torch.autograd.grad(logits[:, 0].sum(), leaf)
    assert g.abs().sum() > 0


def test_adaptive_best_counts_an_image_evaded_under_any_lambda():
    from clipshield.evaluation.detection import DetectionConfig, adaptive_rows

    clf, images, labels = toy_setup(40)
    scorer = scorer_for(clf, images[:20], labels[:20])
    x, y = images[20:], labels[20:]
    with torch.no_grad():
        clean = scorer(x)
    cfg = DetectionConfig(
        ref_eps=0.02, steps=5, adaptive_lams=(0.0, 3.0), adaptive_eot=1, adaptive_blocks=(1, 3), adaptive_upsample=("nearest",)
    )
    rows = adaptive_rows(clf, scorer, x, y, clean, cfg)
    per_lambda = [rows[k]["success_unflagged"] for k in rows if k != "adaptive-best"]
    variants = {"adaptive-pgd@5.1-l0", "adaptive-pgd@5.1-l3-linear", "adaptive-pgd@5.1-l3-hinge"}
    assert set(rows) == variants | {f"{v}-b3-nearest" for v in variants} | {"adaptive-best"}
    assert max(per_lambda) <= rows["adaptive-best"]["success_unflagged"] <= sum(per_lambda) + 1e-9
    for k in rows:
        if k != "adaptive-best":
            assert rows[k]["success_unflagged"] <= rows[k]["success"]


def test_evaluate_command_writes_detection_and_ttc_reports(tmp_path):
    """`clipshield evaluate --attack-score` and `--ttc-adaptive` (the former stand-alone entry points) write their
    JSON and Markdown; an unknown calibration set is one line, exit 2."""
    import json

    from clipshield.cli.main import main

    heldout = "miniworld/plain/color_shape/heldout_caption"
    score_flags = ["--score-n-calibration", "8", "--limit", "8", "--score-lams", "1", "--score-eot", "1", "--score-blocks", "1"]
    score_flags += ["--attacks", "pgd", "cw", "--datasets", heldout]
    assert main(["evaluate", "--attack-score", "--out", str(tmp_path / "d"), *score_flags]) == 0
    result = json.loads((tmp_path / "d" / "detection.json").read_text())
    rows = result["sets"][heldout]
    assert {"clean", "pgd@2", "pgd@4", "pgd@8", "cw@4", "adaptive-pgd@4-l1-linear", "adaptive-pgd@4-l1-hinge", "adaptive-best"} <= set(rows)
    assert "| AUROC |" in (tmp_path / "d" / "detection.md").read_text()
    ttc_flags = ["--limit", "4", "--ttc-seeds", "0", "--steps", "2", "--ttc-eot", "1"]
    assert main(["evaluate", "--ttc-adaptive", "--out", str(tmp_path / "t"), *ttc_flags]) == 0
    metrics = json.loads((tmp_path / "t" / "ttc_adaptive.json").read_text())["results"]["miniworld"]["0"]
    assert 0.0 <= metrics["robust_ttc_adaptive"] <= 1.0 and "robust_ttc" in metrics
    assert main(["evaluate", "--attack-score", "--out", str(tmp_path / "e"), "--score-calibration", "no-such-set"]) == 2


def test_hinge_penalty_acts_only_above_the_threshold():
    clf, images, labels = toy_setup(30)
    scorer = scorer_for(clf, images[:20], labels[:20])
    x, y = images[20:], labels[20:]
    hinge = ScoreAwarePGD(clf, scorer, eps=0.02, lam=5.0, penalty="hinge")
    with torch.no_grad():
        excess = torch.relu(scorer(x) - scorer.params.threshold)
        expected = F.cross_entropy(clf(x), y) - 5.0 * excess.mean()
    assert float(hinge.objective(x, y).detach()) == pytest.approx(float(expected), rel=1e-5)
    with pytest.raises(ValueError, match="hinge"):
        ScoreAwarePGD(clf, scorer, eps=0.02, penalty="square")  # type: ignore[arg-type]
