"""Load testing (issue 6): a bounded locust run against a real TorchServe on 127.0.0.1, plus the
response contract and the pass/fail rules the runner applies.

The load run takes ~30 s in all (15 s of load); it skips only where Java (TorchServe's frontend) is missing.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from tests.load.contract import MANIFEST, Expectation, check_response
from tests.load.report import ReportError, parse_outcomes, problems, read_stats

pytestmark = pytest.mark.integration
needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="TorchServe needs Java 17+ on PATH; java not found")

RUN_TIME_S = 15
USERS = 4
KINDS = {
    "raw clean",
    "raw adversarial",
    "custom labels purify=true",
    "custom labels purify=false",
    "default labels purify=true",
    "default labels purify=false",
}


def _answer(labels=("red circle", "blue square"), purified=True, scores=(0.9, 0.1)) -> str:
    preds = [{"label": lab, "score": s} for lab, s in zip(labels, scores)]
    return json.dumps(
        {
            "predictions": preds,
            "purified": purified,
            "anchor_score": 0.2,
            "prediction_shift": 0.1,
            "flipped": False,
            "flagged": False,
            "model": {"name": "m", "version": "1"},
            "attack_score": None,
        }
    )


def test_contract_accepts_a_conforming_answer():
    expect = Expectation(labels=("red circle", "blue square", "green star"), purify=True, top_k=2)
    assert check_response(200, _answer(), expect) is None


@pytest.mark.parametrize(
    "status, text, expect, reason",
    [
        (503, "queue full", Expectation(), "HTTP 503"),
        (200, "<html>", Expectation(), "not JSON"),
        (200, json.dumps({"predictions": []}), Expectation(), "unexpected keys"),
        (200, _answer(), Expectation(top_k=3, labels=("red circle", "blue square", "green star")), "2 predictions, expected 3"),
        (200, _answer(), Expectation(), "2 predictions, expected 5"),
        (200, _answer(scores=(0.1, 0.9)), Expectation(top_k=2), "descending"),
        (200, _answer(), Expectation(labels=("red circle", "green star"), top_k=2), "not all in the requested set"),
        (200, _answer(purified=True), Expectation(top_k=2, purify=False), "requested purify=False"),
    ],
)
def test_contract_rejects(status, text, expect, reason):
    problem = check_response(status, text, expect)
    assert problem is not None and reason in problem


def _write_stats(prefix: Path, rows: list[tuple[str, int, int, str]]) -> None:
    """A stats CSV in locust's column layout: (name, requests, failures, p95)."""
    cols = [
        "Type",
        "Name",
        "Request Count",
        "Failure Count",
        "Median Response Time",
        "Average Response Time",
        "Min Response Time",
        "Max Response Time",
        "Average Content Size",
        "Requests/s",
        "Failures/s",
        "50%",
        "66%",
        "75%",
        "80%",
        "90%",
        "95%",
        "98%",
        "99%",
        "99.9%",
        "99.99%",
        "100%",
    ]
    with open(f"{prefix}_stats.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(cols)
        for name, n, f, p95 in rows:
            w.writerow(["POST", name, n, f, 10, 11, 2, 90, 400, 5.0, 0.0, 10, 12, 13, 14, 20, p95, 40, 50, 90, 90, 90])


def test_report_fails_on_failures_server_errors_and_p95(tmp_path):
    _write_stats(tmp_path / "locust", [("raw clean", 10, 2, "30"), ("Aggregated", 10, 2, "30")])
    outcomes = parse_outcomes(
        [
            'clipshield_requests_total{Level="Model",outcome="ok",ModelName="clipshield"} 8.0',
            'clipshield_requests_total{outcome="bad_input",Level="Model"} 2.0',
            "other_metric 1.0",
        ]
    )
    assert outcomes == {"ok": 8.0, "bad_input": 2.0}
    summary = read_stats(tmp_path / "locust", outcomes)
    assert summary.total.requests == 10 and summary.total.p95_ms == 30 and [r.name for r in summary.rows] == ["raw clean"]
    found = problems(summary, max_p95_ms=25)
    assert any("2 of 10 requests failed" in p for p in found)
    assert any("bad_input" in p for p in found)
    assert any("p95 30 ms above the bound of 25 ms" in p for p in found)


def test_report_passes_clean_run_and_rejects_empty_or_missing(tmp_path):
    _write_stats(tmp_path / "ok", [("Aggregated", 10, 0, "30")])
    assert problems(read_stats(tmp_path / "ok", {"ok": 10.0}), max_p95_ms=30) == []
    _write_stats(tmp_path / "empty", [("Aggregated", 0, 0, "N/A")])
    found = problems(read_stats(tmp_path / "empty"), max_p95_ms=1000)
    assert any("no requests" in p for p in found) and any("p95 nan" in p for p in found)
    with pytest.raises(ReportError, match="missing"):
        read_stats(tmp_path / "nothing")


@pytest.fixture(scope="module")
def load_run(tmp_path_factory):
    from tests.load.payloads import PayloadConfig
    from tests.load.run_loadtest import LoadTestConfig, run_loadtest

    cfg = LoadTestConfig(
        results_dir=tmp_path_factory.mktemp("loadtest"),
        run_time_s=RUN_TIME_S,
        users=USERS,
        spawn_rate=USERS,
        server_workers=1,
        max_p95_ms=1000,
        payloads=PayloadConfig(n_clean=8, n_adversarial=8),
    )
    return cfg, run_loadtest(cfg)


@needs_java
def test_bounded_run_has_zero_failures(load_run):
    cfg, result = load_run
    t = result.summary.total
    assert result.passed, result.problems
    assert t.failures == 0 and t.requests > 10 * RUN_TIME_S  # ~90 req/s on a 2-core VM; > 10 req/s is the floor
    assert {r.name for r in result.summary.rows} == KINDS  # every part of the mix was exercised
    assert sum(r.requests for r in result.summary.rows) == t.requests
    outcomes = result.summary.server_outcomes
    assert set(outcomes) == {"ok"} and abs(outcomes["ok"] - t.requests) <= USERS  # server agrees with the client
    assert 0 < t.p50_ms <= t.p95_ms <= t.p99_ms <= cfg.max_p95_ms * 10


@needs_java
def test_report_files_exist_and_agree(load_run):
    cfg, result = load_run
    for key in ("stats", "history", "failures", "html", "summary"):
        assert result.files[key].is_file() and result.files[key].stat().st_size > 0, key
    assert read_stats(cfg.results_dir / "locust").total == result.summary.total
    html = result.files["html"].read_text()
    assert all(kind in html for kind in KINDS)
    record = json.loads(result.files["summary"].read_text())
    assert record["passed"] is True and record["summary"]["total"]["requests"] == result.summary.total.requests
    assert record["attack"]["images"] == 8 and record["attack"]["right_to_wrong"] >= 1  # the perturbed images do fool the model


@needs_java
def test_payloads_mix_clean_adversarial_and_label_sets(load_run):
    cfg, _ = load_run
    manifest = json.loads((cfg.results_dir / "work" / "payloads" / MANIFEST).read_text())
    kinds = [it["kind"] for it in manifest["images"]]
    assert kinds.count("clean") == 8 and kinds.count("adversarial") == 8
    assert {it["domain"] for it in manifest["images"]} == {"plain", "noisy", "textured", "outlined"}
    assert {"shapes", "colours"} <= set(manifest["label_sets"]) and len(manifest["label_sets"]) >= 3


@needs_java
def test_p95_bound_is_enforced_on_a_real_summary(load_run):
    _, result = load_run
    p95 = result.summary.total.p95_ms
    assert problems(result.summary, max_p95_ms=p95) == []
    assert [p for p in problems(result.summary, max_p95_ms=p95 / 2) if "above the bound" in p]


def test_kserve_runtime_bounded_run_meets_the_same_contract(tmp_path_factory):
    """`--runtime kserve`: the same mix as v2 requests, judged by the same contract, zero failures."""
    pytest.importorskip("kserve")
    from tests.load.payloads import PayloadConfig
    from tests.load.run_loadtest import LoadTestConfig, run_loadtest

    cfg = LoadTestConfig(
        results_dir=tmp_path_factory.mktemp("loadtest_kserve"),
        run_time_s=RUN_TIME_S,
        users=USERS,
        spawn_rate=USERS,
        max_p95_ms=1000,
        runtime="kserve",
        payloads=PayloadConfig(n_clean=4, n_adversarial=4),
    )
    result = run_loadtest(cfg)
    t = result.summary.total
    assert result.passed, result.problems
    assert t.failures == 0 and t.requests > 5 * RUN_TIME_S
    assert {r.name for r in result.summary.rows} == KINDS
    outcomes = result.summary.server_outcomes
    assert set(outcomes) == {"ok"} and abs(outcomes["ok"] - t.requests) <= USERS
