"""Prometheus recording rules and alerts for clipshield, built from `clipshield.service.metrics.METRICS`.

Recorded series are named `clipshield:<what>:<operation>` and aggregated `by (namespace, job)`.
The latency SLO uses the multi-window, multi-burn-rate alerts of the Google SRE workbook
(ch. 5): page when the 1 h and 5 m burn rates both exceed 14.4, open a ticket when the 6 h and
30 m burn rates both exceed 6.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from clipshield.service.metrics import METRICS, SERVER_METRICS
from monitoring.torchserve_metrics import TS_RESPONSE_COUNTERS

JOB = "clipshield"  # the job label Prometheus gives the serving pods: the Service's name (ServiceMonitor)
BY = "namespace, job"
REQUESTS = "clipshield_requests_total"
ERROR_OUTCOME = "error"  # server-side failures; bad_input, too_large, unsupported_media are the client's
OK_OUTCOME = "ok"
# Bucket bounds of TorchServe's Prometheus histograms (the Java client's defaults): an SLO threshold
# must be one of them, since the ratio is read from the `le` bucket.
TORCHSERVE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
# A gauge that exists once a pod has loaded its model; the first one clipshield.service.metrics declares is used.
LOADED_GAUGES = ("clipshield_runtime_info", "clipshield_model_accuracy")
WINDOWS = ("5m", "30m", "1h", "6h")
# The server front end's own view of every request (SERVER_METRICS: the KServe app; TorchServe: its frontend counters).
HTTP_RESPONSES = "clipshield_http_responses_total"
HTTP_LATENCY = "clipshield_http_request_seconds"
TS_LATENCY_US, TS_REQUESTS = "ts_inference_latency_microseconds", "ts_inference_requests_total"


class MonitoringConfigError(ValueError):
    """The monitoring definitions do not fit the metrics `clipshield.service.metrics` declares."""


@dataclass(frozen=True)
class LatencySLO:
    """`objective` of `metric` observations at or under `threshold_s` seconds."""

    metric: str = "clipshield_encode_seconds"  # the model forward: TorchServe has no whole-request histogram
    threshold_s: float = 0.5
    objective: float = 0.99


@dataclass(frozen=True)
class RequestLatencyObjective:
    """Mean whole-request latency, as the server front end measures it (queueing included), at or under
    `threshold_s`. On the mean because TorchServe's frontend keeps only a total and a count per model
    (`ts_inference_latency_microseconds`, `ts_inference_requests_total`), no histogram; the alert fires
    when both windows are over."""

    threshold_s: float = 1.0
    long: str = "30m"
    short: str = "5m"
    for_: str = "5m"


@dataclass(frozen=True)
class BurnAlert:
    """One multi-window burn-rate alert: both windows must burn faster than `factor`."""

    name: str
    severity: str
    long: str
    short: str
    factor: float
    for_: str


@dataclass(frozen=True)
class Thresholds:
    """Alert thresholds (ratios are fractions of requests; rates are requests per second)."""

    error_ratio: float = 0.05
    flagged_floor: float = 0.05  # a flagged ratio under this never pages, whatever the baseline
    flagged_rise: float = 3.0  # "sudden": the 5 m ratio is this many times the 6 h ratio
    flagged_min_rps: float = 0.05  # ignore bursts of a handful of requests
    down_for: str = "5m"
    no_model_for: str = "10m"


SLO = LatencySLO()
REQUEST_LATENCY = RequestLatencyObjective()
BURN_ALERTS = (
    BurnAlert("ClipshieldLatencySLOFastBurn", "critical", "1h", "5m", 14.4, "2m"),
    BurnAlert("ClipshieldLatencySLOSlowBurn", "warning", "6h", "30m", 6.0, "15m"),
)
THRESHOLDS = Thresholds()
RUNBOOK = "docs/deploy.md"  # one section per alert, anchored by the lower-cased alert name


def _metric(name: str, kind: str) -> tuple[str, str, tuple[str, ...]]:
    if name not in METRICS or METRICS[name][0] != kind:
        known = sorted(n for n, spec in METRICS.items() if spec[0] == kind)
        raise MonitoringConfigError(f"{name} is not a {kind} in clipshield.service.metrics.METRICS; {kind}s: {known}")
    return METRICS[name]


def loaded_gauge() -> str:
    """The gauge whose presence says a pod loaded its model (first of LOADED_GAUGES declared)."""
    for name in LOADED_GAUGES:
        if name in METRICS and METRICS[name][0] == "gauge":
            return name
    raise MonitoringConfigError(f"none of {LOADED_GAUGES} is a gauge in clipshield.service.metrics.METRICS")


def check_definitions(slo: LatencySLO = SLO) -> None:
    """Raise MonitoringConfigError when the rules reference metrics or labels that do not exist."""
    _metric(slo.metric, "histogram")
    if slo.threshold_s not in TORCHSERVE_BUCKETS:
        raise MonitoringConfigError(f"SLO threshold {slo.threshold_s} s is not a bucket bound: {TORCHSERVE_BUCKETS}")
    if "outcome" not in _metric(REQUESTS, "counter")[2]:
        raise MonitoringConfigError(f"{REQUESTS} has no 'outcome' label")
    _metric("clipshield_flagged_total", "counter")
    loaded_gauge()
    for name, kind in ((HTTP_RESPONSES, "counter"), (HTTP_LATENCY, "histogram")):
        if SERVER_METRICS.get(name, ("",))[0] != kind:
            raise MonitoringConfigError(f"{name} is not a {kind} in clipshield.service.metrics.SERVER_METRICS: {sorted(SERVER_METRICS)}")


def _sel(name: str, **matchers: str) -> str:
    inner = ", ".join([f'job="{JOB}"'] + [f'{k}="{v}"' for k, v in matchers.items()])
    return f"{name}{{{inner}}}"


def _sum_rate(selector: str, window: str, by: str = BY) -> str:
    return f"sum by ({by}) (rate({selector}[{window}]))"


def _ratio_or_zero(numerator: str, denominator: str) -> str:
    """numerator / denominator, 0 (not empty) when the numerator series does not exist yet."""
    return f"({numerator} or {denominator} * 0) / {denominator}"


def _record(name: str, expr: str) -> dict[str, str]:
    return {"record": name, "expr": expr}


def request_rules() -> list[dict[str, str]]:
    """Request rates and outcome shares, server-error ratios per window."""
    all_requests = _sel(REQUESTS)
    rules = [
        _record("clipshield:requests:rate5m", _sum_rate(all_requests, "5m", f"{BY}, outcome")),
        _record(
            "clipshield:requests:ratio_rate5m",
            f"{_sum_rate(all_requests, '5m', f'{BY}, outcome')} / ignoring (outcome) group_left {_sum_rate(all_requests, '5m')}",
        ),
    ]
    for w in WINDOWS:
        errors = _sum_rate(_sel(REQUESTS, outcome=ERROR_OUTCOME), w)
        rules.append(_record(f"clipshield:request_errors:ratio_rate{w}", _ratio_or_zero(errors, _sum_rate(all_requests, w))))
    return rules


def server_rules() -> list[dict[str, str]]:
    """The front end's share of 5xx answers per window, and its mean whole-request latency: TorchServe's
    frontend counters or the KServe app's SERVER_METRICS, whichever the job exposes."""
    rules = []
    for w in WINDOWS:
        errors = f"({_sum_rate(_sel(TS_RESPONSE_COUNTERS['5xx']), w)} or {_sum_rate(_sel(HTTP_RESPONSES, code_class='5xx'), w)})"
        # TorchServe's three counters differ only by name, which rate() drops: a code_class label keeps them apart.
        classes = [f'label_replace(rate({_sel(name)}[{w}]), "code_class", "{c}", "", "")' for c, name in TS_RESPONSE_COUNTERS.items()]
        total = f"sum by ({BY}) (\n  " + "\n  or ".join([*classes, f"rate({_sel(HTTP_RESPONSES)}[{w}])"]) + "\n)"
        rules.append(_record(f"clipshield:server_errors:ratio_rate{w}", _ratio_or_zero(errors, total)))
    for w in (REQUEST_LATENCY.short, REQUEST_LATENCY.long):
        torchserve = f"{_sum_rate(_sel(TS_LATENCY_US), w)} / 1e6 / {_sum_rate(_sel(TS_REQUESTS), w)}"
        kserve = f"{_sum_rate(_sel(f'{HTTP_LATENCY}_sum'), w)} / {_sum_rate(_sel(f'{HTTP_LATENCY}_count'), w)}"
        rules.append(_record(f"clipshield:request_latency_mean_seconds:rate{w}", f"({torchserve})\nor ({kserve})"))
    return rules


def latency_rules(slo: LatencySLO = SLO) -> list[dict[str, str]]:
    """SLO violation ratios per window and p50/p90/p99 of every `_seconds` histogram."""
    rules = []
    bucket = _sel(f"{slo.metric}_bucket", le=str(slo.threshold_s))
    for w in WINDOWS:
        good, total = _sum_rate(bucket, w), _sum_rate(_sel(f"{slo.metric}_count"), w)
        rules.append(_record(f"clipshield:latency_slo_violations:ratio_rate{w}", f"1 - ({good} / {total})"))
    for name in stage_histograms():
        short = name.removeprefix("clipshield_")
        for q in (0.5, 0.9, 0.99):
            expr = f"histogram_quantile({q}, {_sum_rate(_sel(f'{name}_bucket'), '5m', f'{BY}, le')})"
            rules.append(_record(f"clipshield:{short}:p{round(q * 100)}_rate5m", expr))
    return rules


def signal_rules() -> list[dict[str, str]]:
    """Every other counter (flagged, flipped, ...) as a share of successful requests."""
    ok = _sel(REQUESTS, outcome=OK_OUTCOME)
    rules = []
    for name in signal_counters():
        short = name.removeprefix("clipshield_").removesuffix("_total")
        windows = ("5m", "6h") if name == "clipshield_flagged_total" else ("5m",)
        for w in windows:
            rules.append(_record(f"clipshield:{short}:ratio_rate{w}", _ratio_or_zero(_sum_rate(_sel(name), w), _sum_rate(ok, w))))
    return rules


def stage_histograms() -> list[str]:
    """Latency histograms (`*_seconds`) in declaration order: one per serving stage."""
    return [n for n, (kind, _, _) in METRICS.items() if kind == "histogram" and n.endswith("_seconds")]


def signal_counters() -> list[str]:
    """Counters other than the request counter: per-request robustness signals."""
    return [n for n, (kind, _, _) in METRICS.items() if kind == "counter" and n != REQUESTS]


def _alert(name: str, expr: str, for_: str, severity: str, summary: str, description: str) -> dict[str, Any]:
    return {
        "alert": name,
        "expr": expr,
        "for": for_,
        "labels": {"severity": severity},
        "annotations": {"summary": summary, "description": description, "runbook": f"{RUNBOOK}#{name.lower()}"},
    }


def burn_alerts(slo: LatencySLO = SLO) -> list[dict[str, Any]]:
    """The two latency burn-rate alerts."""
    budget = round(1 - slo.objective, 6)
    out = []
    for b in BURN_ALERTS:
        limit = round(b.factor * budget, 6)
        expr = (
            f"clipshield:latency_slo_violations:ratio_rate{b.long} > {limit}\n"
            f"and clipshield:latency_slo_violations:ratio_rate{b.short} > {limit}"
        )
        out.append(
            _alert(
                b.name,
                expr,
                b.for_,
                b.severity,
                f"Latency SLO budget burning {b.factor}x too fast",
                f"More than {limit:.2%} of {slo.metric} observations took over {slo.threshold_s} s in the last {b.long} "
                f"and {b.short} (objective {slo.objective:.0%}): at this rate the 30-day budget lasts "
                f"{30 / b.factor:.1f} days.",
            )
        )
    return out


def request_latency_alert(objective: RequestLatencyObjective = REQUEST_LATENCY) -> dict[str, Any]:
    """The whole-request latency objective, beside the encoder-stage SLO."""
    rec = "clipshield:request_latency_mean_seconds:rate"
    expr = f"{rec}{objective.long} > {objective.threshold_s}\nand {rec}{objective.short} > {objective.threshold_s}"
    return _alert(
        "ClipshieldRequestLatencyHigh",
        expr,
        objective.for_,
        "warning",
        "Whole requests are slow",
        f"The mean whole-request latency the server front end measured (queueing and decoding included) was over "
        f"{objective.threshold_s} s in the last {objective.long} and {objective.short}.",
    )


def health_alerts(t: Thresholds = THRESHOLDS) -> list[dict[str, Any]]:
    """Server errors, scrape failures and pods without a loaded model."""
    gauge = loaded_gauge()
    up = _sel("up")
    no_model = (
        f"max by (job) ({up}) == 0\nor absent({up})\n"
        f"or (max by (namespace, pod) ({up}) == 1\n    unless on (namespace, pod) count by (namespace, pod) ({_sel(gauge)}))"
    )
    return [
        _alert(
            "ClipshieldHighErrorRatio",
            f"clipshield:request_errors:ratio_rate5m > {t.error_ratio}\nor clipshield:server_errors:ratio_rate5m > {t.error_ratio}",
            "10m",
            "warning",
            "clipshield answers many requests with server errors",
            f"More than {t.error_ratio:.0%} of requests ended with outcome={ERROR_OUTCOME} in the handler, or with an HTTP 5xx "
            "from the server front end (a 503 from a busy or restarting server never reaches the handler), over 5 minutes.",
        ),
        _alert(
            "ClipshieldTargetDown",
            f"{_sel('up')} == 0",
            t.down_for,
            "warning",
            "Prometheus cannot scrape a clipshield pod",
            "The TorchServe metrics endpoint (port 8082, /metrics) of this pod does not answer.",
        ),
        _alert(
            "ClipshieldNoModelLoaded",
            no_model,
            t.no_model_for,
            "critical",
            "No clipshield model is being served",
            f"Either no clipshield pod is scraped successfully, or a pod answers but never reported {gauge}, "
            "i.e. its model worker never finished loading.",
        ),
    ]


def attack_alert(t: Thresholds = THRESHOLDS) -> dict[str, Any]:
    """A sudden rise of the flagged ratio: possibly an adversarial attack."""
    now, base = "clipshield:flagged:ratio_rate5m", "clipshield:flagged:ratio_rate6h"
    traffic = f'sum by ({BY}) (clipshield:requests:rate5m{{outcome="{OK_OUTCOME}"}}) > {t.flagged_min_rps}'
    expr = f"{now} > {t.flagged_floor}\nand {now} > {t.flagged_rise} * {base}\nand on ({BY}) {traffic}"
    return _alert(
        "ClipshieldPossibleAttack",
        expr,
        "2m",
        "warning",
        "Sudden rise of requests flagged as possibly adversarial",
        f"Over {t.flagged_floor:.0%} of successful requests in 5 minutes were flagged, {t.flagged_rise}x the "
        "6-hour ratio: inspect the sources of recent traffic.",
    )


def rule_groups() -> list[dict[str, Any]]:
    """The `groups` of the PrometheusRule (and of a plain Prometheus rule file)."""
    check_definitions()
    return [
        {"name": "clipshield.rules", "rules": request_rules() + server_rules() + latency_rules() + signal_rules()},
        {"name": "clipshield.alerts", "rules": burn_alerts() + [request_latency_alert()] + health_alerts() + [attack_alert()]},
    ]


def prometheus_rule(labels: Mapping[str, str]) -> dict[str, Any]:
    """The PrometheusRule custom resource (Prometheus Operator) holding `rule_groups()`."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "clipshield", "labels": dict(labels)},
        "spec": {"groups": rule_groups()},
    }
