"""A real Prometheus (1 s scrapes, the generated rule file) scraping a real clipshield TorchServe.

Known requests go in (ok and bad input, then 503s from TorchServe's frontend with no worker left); the
counters, the recording rules and the alert states are read back through Prometheus's HTTP API. Needs Java (TorchServe) and the prometheus binary
(`make tools`; a missing binary fails with that hint).
"""

from __future__ import annotations

import functools
import shutil

import pytest

from . import serving_helpers as H
from .prometheus_helpers import Prometheus, require_tool, start_prometheus, wait_for

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("java") is None, reason="TorchServe needs Java 17+ on PATH; java not found"),
]

N_OK, N_BAD = 6, 2  # the measured phase; one of each is sent before it so both series exist
BROKEN_PNG = b"\x89PNG\r\n\x1a\nbroken"


def _send(handle, ok: int, bad: int, seed: int) -> None:
    for i in range(ok):
        r = H.post_png(handle, H.image(seed=seed + i))
        assert r.status_code == 200, r.text
    for _ in range(bad):
        assert H.post_png(handle, BROKEN_PNG).status_code == 400


def _by_outcome(prom: Prometheus, expr: str) -> dict[str, float]:
    return {s["metric"].get("outcome", ""): float(s["value"][1]) for s in prom.query(expr)}


def _scalar(prom: Prometheus, expr: str) -> float | None:
    result = prom.query(expr)
    return float(result[0]["value"][1]) if len(result) == 1 else None


def _close(value: float | None, expected: float, tol: float) -> bool:
    return value is not None and abs(value - expected) <= tol


def _check_recordings(prom: Prometheus) -> None:
    share = N_BAD / (N_OK + N_BAD)
    wait_for(
        lambda: _close(_scalar(prom, 'clipshield:requests:ratio_rate5m{outcome="bad_input"}'), share, 0.05),
        15,
        f"bad_input share of the measured phase ~ {share}",
        prom,
    )
    shares = _by_outcome(prom, "clipshield:requests:ratio_rate5m")
    assert set(shares) == {"ok", "bad_input"} and _close(sum(shares.values()), 1.0, 1e-9), shares
    rates = _by_outcome(prom, "clipshield:requests:rate5m")
    assert rates["ok"] > rates["bad_input"] > 0, rates
    assert _scalar(prom, "clipshield:request_errors:ratio_rate5m") == 0.0  # 400s are the client's, not errors
    assert _scalar(prom, "clipshield:latency_slo_violations:ratio_rate5m") == 0.0  # the mini model encodes in ms
    p99 = _scalar(prom, "clipshield:encode_seconds:p99_rate5m")
    assert p99 is not None and 0 < p99 <= 0.5, p99
    flagged = _scalar(prom, "clipshield:flagged:ratio_rate5m")
    assert flagged is not None and 0 <= flagged <= 1, flagged


def _check_alerts(prom: Prometheus) -> None:
    from monitoring.rules import loaded_gauge

    rules = prom.rules()
    assert rules and all(r["health"] == "ok" for r in rules), [(r["name"], r.get("lastError")) for r in rules]
    states = {r["name"]: r["state"] for r in rules if r["type"] == "alerting"}
    loaded = bool(prom.query(loaded_gauge()))
    # The pod is up; the model-loaded alert holds (pending, for 10m) only while the loaded gauge is missing
    # (clipshield_model_accuracy is absent when the model card lists no accuracy).
    expected_no_model = "inactive" if loaded else "pending"
    wait_for(
        lambda: {r["name"]: r["state"] for r in prom.rules() if r["type"] == "alerting"}["ClipshieldNoModelLoaded"] == expected_no_model,
        10,
        f"ClipshieldNoModelLoaded {expected_no_model}",
        prom,
    )
    quiet = {name: state for name, state in states.items() if name != "ClipshieldNoModelLoaded"}
    assert set(quiet.values()) == {"inactive"}, quiet


def _alert_state(prom: Prometheus, name: str) -> str:
    return {r["name"]: r["state"] for r in prom.rules() if r["type"] == "alerting"}[name]


def _check_frontend_503s(prom: Prometheus, handle, n: int = 11) -> None:
    """With no worker left, TorchServe's frontend answers 503 itself: the handler never sees those requests,
    yet the front end's 5xx ratio counts them and the error-ratio alert goes pending."""
    import requests

    from monitoring.rules import JOB

    url = f"{handle.config.management_address}/models/clipshield?min_worker=0&max_worker=0&synchronous=true"
    assert requests.put(url, headers=H.auth(handle, "management"), timeout=60).status_code == 200
    # TorchServe creates the counter at its first 503, and rate() cannot see a series' first value:
    # one 503 first, scraped, then the measured ones (so does a pod's first 5xx go unseen in production).
    for count, first in ((1, 0), (n, 1)):
        for i in range(first, count):
            r = H.post_png(handle, H.image(seed=200 + i))
            assert r.status_code == 503, (r.status_code, r.text)
        wait_for(functools.partial(prom.query, f'sum(Requests5XX{{job="{JOB}"}}) == {count}'), 15, f"{count} front-end 5xx counted", prom)
    wait_for(lambda: (_scalar(prom, "clipshield:server_errors:ratio_rate5m") or 0) > 0.05, 15, "server-error ratio over 5 %", prom)
    assert _scalar(prom, "clipshield:request_errors:ratio_rate5m") == 0.0  # the handler saw none of them
    wait_for(lambda: _alert_state(prom, "ClipshieldHighErrorRatio") == "pending", 15, "ClipshieldHighErrorRatio pending", prom)


def test_prometheus_scrapes_counters_and_evaluates_rules(miniworld_model, tmp_path):
    from clipshield.handlers.torchserve.launcher import stop_server
    from monitoring.generate import MONITORING, REPO, RULE_RESOURCE, rule_file_from_resource
    from monitoring.rules import JOB

    require_tool("prometheus")  # before the slow TorchServe start
    rule_file = tmp_path / "clipshield.rules.yaml"
    rule_file.write_text(rule_file_from_resource((REPO / MONITORING / RULE_RESOURCE).read_text()))
    (tmp_path / "prom").mkdir()
    handle, store = H.start(miniworld_model, tmp_path / "ts")
    prom = None
    try:
        prom = start_prometheus(tmp_path / "prom", handle.config.metrics_address.removeprefix("http://"), rule_file, JOB)
        wait_for(lambda: _scalar(prom, f'up{{job="{JOB}"}}') == 1.0, 15, "TorchServe's metrics scraped", prom)
        counts = f'sum by (outcome) (clipshield_requests_total{{job="{JOB}"}})'
        _send(handle, 1, 1, seed=100)
        wait_for(lambda: _by_outcome(prom, counts) == {"ok": 1, "bad_input": 1}, 15, "warm-up counted", prom)
        _send(handle, N_OK, N_BAD, seed=0)
        want = {"ok": 1 + N_OK, "bad_input": 1 + N_BAD}
        wait_for(lambda: _by_outcome(prom, counts) == want, 15, f"counters {want}", prom)
        _check_recordings(prom)
        _check_alerts(prom)
        mean = _scalar(prom, "clipshield:request_latency_mean_seconds:rate5m")  # TorchServe's frontend total / count
        assert mean is not None and 0 < mean < 1.0, mean
        _check_frontend_503s(prom, handle)
    finally:
        if prom is not None:
            prom.stop()
        assert stop_server(store)
