"""The non-adaptive TTC evaluation entry point on a few mini-world images."""

from __future__ import annotations

import json

import pytest

from clipshield.evaluation.ttc_eval import TTCEvalConfig, evaluate_ttc, main
from clipshield.models.ttc import TTCConfig

FRACTIONS = ("clean", "clean_ttc", "robust", "robust_ttc", "countered_clean", "countered_adv")


@pytest.mark.parametrize("tau_thres,countered", [(0.0, 0.0), (1e9, 1.0)])
def test_metrics_follow_the_threshold_and_the_attack(miniworld_model, tau_thres, countered):
    cfg = TTCEvalConfig(limit=6, batch_size=4, steps=3, ttc=TTCConfig(tau_thres=tau_thres))
    m = evaluate_ttc(miniworld_model, cfg)
    assert m["n"] == cfg.limit
    assert all(0.0 <= m[k] <= 1.0 for k in FRACTIONS)
    assert m["countered_clean"] == countered and m["countered_adv"] == countered
    assert m["robust"] < m["clean"]  # PGD against the undefended model works
    assert m["tau_median_clean"] > 0 and m["tau_median_adv"] > 0


def test_main_prints_config_and_metrics(capsys):
    assert main(["--limit", "2", "--steps", "1", "--tau-thres", "0"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["config"]["limit"] == 2 and doc["config"]["ttc"]["tau_thres"] == 0
    assert doc["metrics"]["n"] == 2
