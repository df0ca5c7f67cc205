"""The TTC evaluations (`clipshield evaluate --ttc` / `--ttc-adaptive`) on a few mini-world images."""

from __future__ import annotations

import json

import pytest

from clipshield.cli.main import main
from clipshield.evaluation.ttc_eval import TTCEvalConfig, evaluate_ttc
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


def test_evaluate_ttc_prints_and_writes_config_and_metrics(capsys, tmp_path):
    argv = ["evaluate", "--ttc", "--limit", "2", "--steps", "1", "--eps", "2", "--ttc-tau-thres", "0", "--out", str(tmp_path)]
    assert main(argv) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc == json.loads((tmp_path / "ttc.json").read_text())
    assert doc["config"]["limit"] == 2 and doc["config"]["ttc"]["tau_thres"] == 0
    assert doc["config"]["eps"] == pytest.approx(2 / 255) and doc["config"]["alpha"] == pytest.approx(0.5 / 255)
    assert doc["config"]["dataset"] == "miniworld/plain/shape/seen" and doc["metrics"]["n"] == 2


def test_evaluate_ttc_adaptive_writes_its_table_for_the_given_seeds(tmp_path):
    argv = ["evaluate", "--ttc-adaptive", "--limit", "2", "--steps", "1", "--ttc-eot", "1", "--ttc-seeds", "3"]
    assert main([*argv, "--datasets", "miniworld/plain/shape/seen", "--out", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "ttc_adaptive.json").read_text())
    assert doc["config"]["base"]["dataset"] == "miniworld/plain/shape/seen" and doc["config"]["eot"] == 1
    assert set(doc["results"]["miniworld"]) == {"3"}
    assert "PGD through TTC" in (tmp_path / "ttc_adaptive.md").read_text()


def test_ttc_flags_are_checked_before_loading(capsys, tmp_path):
    assert main(["evaluate", "--ttc", "--ttc-tau-thres", "-1", "--out", str(tmp_path)]) == 2
    assert "ttc-tau-thres" in capsys.readouterr().err
