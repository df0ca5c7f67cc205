"""`promtool test rules` cases for every clipshield alert: one where it fires, one where it must not.

Series are written in promtool's expanding notation (`a+bxn`: n+1 samples, one per `interval`).
Metric names come from `clipshield.service.metrics` through `rules`, so a renamed metric renames the tests.
"""

from __future__ import annotations

from typing import Any

from monitoring.rules import (
    BURN_ALERTS,
    ERROR_OUTCOME,
    HTTP_LATENCY,
    HTTP_RESPONSES,
    JOB,
    OK_OUTCOME,
    REQUEST_LATENCY,
    REQUESTS,
    SLO,
    TS_LATENCY_US,
    TS_REQUESTS,
    loaded_gauge,
    rule_groups,
)
from monitoring.torchserve_metrics import TS_RESPONSE_COUNTERS

RULE_FILE = "clipshield.rules.yaml"
NS = "clipshield"
POD = "clipshield-0"
BASE = {"job": JOB, "namespace": NS}
# Coarser than a real Prometheus (30 s) to keep the 6-hour cases fast; every `for` still spans several evaluations.
EVALUATION_INTERVAL = "2m"


def _series(name: str, values: str, **labels: str) -> dict[str, str]:
    all_labels = {**BASE, "pod": POD, **labels}
    inner = ", ".join(f'{k}="{v}"' for k, v in all_labels.items())
    return {"series": f"{name}{{{inner}}}", "values": values}


def _alert_test(name: str, at: str, labels: list[dict[str, str]]) -> dict[str, Any]:
    alert = _alert_rule(name)
    expected = [{"exp_labels": {**lab, **alert["labels"]}, "exp_annotations": alert["annotations"]} for lab in labels]
    return {"eval_time": at, "alertname": name, "exp_alerts": expected}


def _alert_rule(name: str) -> dict[str, Any]:
    for group in rule_groups():
        for rule in group["rules"]:
            if rule.get("alert") == name:
                return rule
    raise KeyError(name)


def _latency(violating_per_min: int, minutes: int) -> list[dict[str, str]]:
    """SLO histogram with 100 observations a minute, `violating_per_min` over the threshold."""
    good = 100 - violating_per_min
    return [
        _series(f"{SLO.metric}_bucket", f"0+{good}x{minutes}", le=str(SLO.threshold_s)),
        _series(f"{SLO.metric}_count", f"0+100x{minutes}"),
    ]


def burn_rate_tests() -> list[dict[str, Any]]:
    """Fast burn: 20 % slow requests fire it, 1 % do not; slow burn: 10 % fire it (not the fast one), 3 % do not."""
    fast, slow = (b.name for b in BURN_ALERTS)
    return [
        {"interval": "1m", "input_series": _latency(20, 70), "alert_rule_test": [_alert_test(fast, "65m", [BASE])]},
        {
            "interval": "1m",
            "input_series": _latency(1, 70),
            "alert_rule_test": [_alert_test(fast, "65m", []), _alert_test(slow, "65m", [])],
        },
        {
            "interval": "1m",
            "input_series": _latency(10, 60),
            "alert_rule_test": [_alert_test(slow, "40m", [BASE]), _alert_test(fast, "40m", [])],
        },
        {"interval": "1m", "input_series": _latency(3, 60), "alert_rule_test": [_alert_test(slow, "40m", [])]},
    ]


def _requests(ok_per_min: int, errors_per_min: int, minutes: int) -> list[dict[str, str]]:
    return [
        _series(REQUESTS, f"0+{ok_per_min}x{minutes}", outcome=OK_OUTCOME),
        _series(REQUESTS, f"0+{errors_per_min}x{minutes}", outcome=ERROR_OUTCOME),
    ]


def error_ratio_tests() -> list[dict[str, Any]]:
    """10 % server errors fire the alert; 0.5 % do not."""
    return [
        {
            "interval": "1m",
            "input_series": _requests(90, 10, 30),
            "alert_rule_test": [_alert_test("ClipshieldHighErrorRatio", "25m", [BASE])],
        },
        {"interval": "1m", "input_series": _requests(199, 1, 30), "alert_rule_test": [_alert_test("ClipshieldHighErrorRatio", "25m", [])]},
    ]


def _frontend(kind: str, ok_per_min: int, errors_per_min: int, minutes: int) -> list[dict[str, str]]:
    """Front-end responses (TorchServe's counters or the KServe app's) beside handler counters that saw no error:
    the 5xx never reached the handler."""
    handler = _requests(ok_per_min, 0, minutes)
    if kind == "torchserve":
        ts = {"Level": "Host", "Hostname": POD}
        return handler + [
            _series(TS_RESPONSE_COUNTERS["2xx"], f"0+{ok_per_min}x{minutes}", **ts),
            _series(TS_RESPONSE_COUNTERS["5xx"], f"0+{errors_per_min}x{minutes}", **ts),
        ]
    return handler + [
        _series(HTTP_RESPONSES, f"0+{ok_per_min}x{minutes}", code_class="2xx"),
        _series(HTTP_RESPONSES, f"0+{errors_per_min}x{minutes}", code_class="5xx"),
    ]


def frontend_error_tests() -> list[dict[str, Any]]:
    """Front-end 5xx only (503s that never reached the handler), per runtime: 10 % fire the alert, 0.5 % do not."""
    name = "ClipshieldHighErrorRatio"
    tests = []
    for kind in ("torchserve", "kserve"):
        tests.append({"interval": "1m", "input_series": _frontend(kind, 90, 10, 30), "alert_rule_test": [_alert_test(name, "25m", [BASE])]})
        tests.append({"interval": "1m", "input_series": _frontend(kind, 199, 1, 30), "alert_rule_test": [_alert_test(name, "25m", [])]})
    return tests


def _whole_request(kind: str, mean_s: float, minutes: int) -> list[dict[str, str]]:
    """100 requests a minute whose mean whole-request latency is `mean_s`, as each runtime's front end records it."""
    if kind == "torchserve":
        model = {"model_name": "clipshield", "model_version": "default", "hostname": POD}
        return [
            _series(TS_LATENCY_US, f"0+{round(100 * mean_s * 1e6)}x{minutes}", **model),
            _series(TS_REQUESTS, f"0+100x{minutes}", **model),
        ]
    return [_series(f"{HTTP_LATENCY}_sum", f"0+{100 * mean_s}x{minutes}"), _series(f"{HTTP_LATENCY}_count", f"0+100x{minutes}")]


def request_latency_tests() -> list[dict[str, Any]]:
    """Whole requests at twice the objective's mean fire the alert, at a fifth of it do not; both runtimes."""
    name, limit = "ClipshieldRequestLatencyHigh", REQUEST_LATENCY.threshold_s
    tests = []
    for kind in ("torchserve", "kserve"):
        tests.append(
            {"interval": "1m", "input_series": _whole_request(kind, 2 * limit, 50), "alert_rule_test": [_alert_test(name, "45m", [BASE])]}
        )
        tests.append(
            {"interval": "1m", "input_series": _whole_request(kind, limit / 5, 50), "alert_rule_test": [_alert_test(name, "45m", [])]}
        )
    return tests


def availability_tests() -> list[dict[str, Any]]:
    """Scrape down fires both alerts; a pod up without the loaded-model gauge fires one; a loaded pod none."""
    gauge = loaded_gauge()
    up = {"instance": f"{POD}:8082"}
    pod_labels = {"namespace": NS, "pod": POD}
    return [
        {
            "interval": "1m",
            "input_series": [_series("up", "0x30", **up)],
            "alert_rule_test": [
                _alert_test("ClipshieldTargetDown", "20m", [{**BASE, "pod": POD, **up}]),
                _alert_test("ClipshieldNoModelLoaded", "20m", [{"job": JOB}]),
            ],
        },
        {
            "interval": "1m",
            "input_series": [_series("up", "1x30", **up)],
            "alert_rule_test": [
                _alert_test("ClipshieldNoModelLoaded", "20m", [pod_labels]),
                _alert_test("ClipshieldTargetDown", "20m", []),
            ],
        },
        {
            "interval": "1m",
            "input_series": [_series("up", "1x30", **up), _series(gauge, "1x30")],
            "alert_rule_test": [_alert_test("ClipshieldNoModelLoaded", "20m", []), _alert_test("ClipshieldTargetDown", "20m", [])],
        },
        {
            "interval": "1m",
            "input_series": [],  # nothing scraped at all: no target is up
            "alert_rule_test": [_alert_test("ClipshieldNoModelLoaded", "20m", [{"job": JOB}])],
        },
    ]


def attack_tests() -> list[dict[str, Any]]:
    """6 h of clean traffic, then half the requests flagged: fires. Quiet, each in its own namespace of one
    run: a steady 10 % flagged, a rise to under the floor, and the same jump on a trickle of traffic."""
    flagged = "clipshield_flagged_total"
    quiet = {"steady": ("0+60x400", "0+6x400"), "under-floor": ("0+60x400", "0x360 1+1x30"), "trickle": ("0+1x400", "0x360 1+1x30")}
    quiet_series = [
        s
        for ns, (ok, flags) in quiet.items()
        for s in (_series(REQUESTS, ok, outcome=OK_OUTCOME, namespace=ns), _series(flagged, flags, namespace=ns))
    ]
    return [
        {
            "interval": "1m",
            "input_series": [_series(REQUESTS, "0+60x400", outcome=OK_OUTCOME), _series(flagged, "0x360 30+30x30")],
            "alert_rule_test": [_alert_test("ClipshieldPossibleAttack", "370m", [BASE])],
        },
        {"interval": "1m", "input_series": quiet_series, "alert_rule_test": [_alert_test("ClipshieldPossibleAttack", "370m", [])]},
    ]


def recording_tests() -> list[dict[str, Any]]:
    """The request recordings: outcome shares, and an error ratio of 0 (not empty) without error series."""
    series = [_series(REQUESTS, "0+30x20", outcome=OK_OUTCOME), _series(REQUESTS, "0+10x20", outcome="bad_input")]
    shares = [
        {"labels": f'{{job="{JOB}", namespace="{NS}", outcome="{o}"}}', "value": v} for o, v in (("bad_input", 0.25), (OK_OUTCOME, 0.75))
    ]
    return [
        {
            "interval": "1m",
            "input_series": series,
            "promql_expr_test": [
                {"expr": "round(clipshield:requests:ratio_rate5m, 0.001)", "eval_time": "15m", "exp_samples": shares},
                {
                    "expr": "clipshield:request_errors:ratio_rate5m",
                    "eval_time": "15m",
                    "exp_samples": [{"labels": f'clipshield:request_errors:ratio_rate5m{{job="{JOB}", namespace="{NS}"}}', "value": 0}],
                },
            ],
        }
    ]


def unit_tests() -> dict[str, Any]:
    """The whole promtool test file (rule file next to it, named RULE_FILE)."""
    tests = burn_rate_tests() + error_ratio_tests() + frontend_error_tests() + request_latency_tests()
    tests += availability_tests() + attack_tests() + recording_tests()
    return {"rule_files": [RULE_FILE], "evaluation_interval": EVALUATION_INTERVAL, "tests": tests}
