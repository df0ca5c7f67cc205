"""Training diagnostics (docs/methods.md §3.3): per-term gradient norms, map ranges, the min-max epsilon and the rms distance."""

from __future__ import annotations

import csv
import math

import pytest
import torch

from clipshield.models.factory import from_record
from clipshield.training.diagnostics import TermProbe, range_summary, score_ranges, term_gradient_norms
from clipshield.training.methods import FrozenBatch, LossInputs, LossOutput, TextHeads, get_method
from clipshield.training.methods.attention import grid_scores, map_distance, patch_scores, upsample
from clipshield.training.pretrain import miniworld_record


def test_term_gradient_norms_match_autograd_and_keep_the_graph():
    w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    a, b = (w**2).sum(), 3 * w.sum()
    out = LossOutput(a + b, {"a": a, "b": b, "const": torch.tensor(1.0)})
    norms = term_gradient_norms(out, [w], ("a", "b", "const", "missing", "total"))
    assert set(norms) == {"a", "b", "total"}  # no gradient for constants, unknown names skipped
    assert norms["a"] == pytest.approx(math.hypot(2, 4)) and norms["b"] == pytest.approx(math.hypot(3, 3))
    assert norms["total"] == pytest.approx(math.hypot(5, 7))
    out.total.backward()  # the graph survived the probe
    torch.testing.assert_close(w.grad, torch.tensor([5.0, 7.0]))


def test_minmax_epsilon_bounds_the_gradient_on_flat_maps():
    tokens = torch.randn(1, 17, 8, generator=torch.Generator().manual_seed(0))
    text = torch.nn.functional.normalize(torch.randn(1, 8), dim=-1)
    torch.testing.assert_close(grid_scores(tokens, text, eps=0.0), grid_scores(tokens, text))
    raw = patch_scores(tokens, text)
    torch.testing.assert_close(score_ranges(tokens, text), raw.amax(1) - raw.amin(1))
    # a nearly flat score map: squeeze the patch tokens towards their mean
    flat = tokens.clone()
    flat[:, 1:] = flat[:, 1:].mean(1, keepdim=True) + 1e-4 * (flat[:, 1:] - flat[:, 1:].mean(1, keepdim=True))

    def grad_norm(eps: float) -> float:
        t = flat.clone().requires_grad_(True)
        (grid_scores(t, text, eps=eps) * torch.linspace(0, 1, 16).view(1, 4, 4)).sum().backward()
        return float(t.grad.norm())

    assert grad_norm(0.0) > 30 * grad_norm(0.05)


def test_rms_distance_is_resolution_free_and_l2_is_not():
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(2, 7, 7, generator=g), torch.rand(2, 7, 7, generator=g)
    small, large = (upsample(a, s) - upsample(b, s) for s in (32, 224))
    zero = torch.zeros_like
    l2_ratio = float(map_distance(large, zero(large), "l2") / map_distance(small, zero(small), "l2"))
    rms_ratio = float(map_distance(large, zero(large), "rms") / map_distance(small, zero(small), "rms"))
    assert l2_ratio == pytest.approx(7.0, rel=0.05) and rms_ratio == pytest.approx(1.0, rel=0.05)


def test_probe_records_every_nth_step_and_writes_csv(tmp_path):
    torch.manual_seed(0)
    target, frozen = from_record(miniworld_record()), from_record(miniworld_record())
    frozen.load_state_dict(target.state_dict())
    images, labels = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 1])
    heads = TextHeads(torch.nn.functional.normalize(torch.randn(3, target.clip.text_projection.shape[1]), dim=-1))
    batch = LossInputs(target, images, labels, heads, adv=(images + 4 / 255).clamp(0, 1), frozen=FrozenBatch(frozen))
    method = get_method("tga-zsr")
    probe = TermProbe(every=2)
    for step in range(3):
        probe(step, batch, method.loss(batch, method.params()))
    assert [r["step"] for r in probe.rows] == [0, 2]
    row = probe.rows[0]
    assert row["grad_ce"] > 0 and row["grad_ar_weighted"] > 0 and 0 <= row["batch_adv_acc"] <= 1
    assert row["range_clean_target_min"] <= row["range_clean_target_median"]
    assert len(probe.ranges) == 2 * 3 * 4  # 2 probed steps x 3 kinds x 4 images
    probe.write(tmp_path)
    with (tmp_path / "diagnostics.csv").open() as fh:
        assert len(list(csv.DictReader(fh))) == 2
    summary = range_summary(probe.ranges, thresholds=(1e9,), kind="clean_frozen")
    assert summary["n"] == 8 and summary["below_1e+09"] == 1.0 and summary["p1"] <= summary["p50"]
    with pytest.raises(ValueError, match=">= 1"):
        TermProbe(every=0)
