"""The clipshield Grafana dashboard, built with grafana-foundation-sdk from `clipshield.service.metrics.METRICS`.

Rows: overview (recorded SLO and error ratios), latency percentiles per stage and pod (one panel
per `*_seconds` histogram, plus TorchServe's own mean latencies), request outcomes, robustness
signals (every other counter as a share of successful requests, every other histogram's
quantiles) and the model (every gauge, e.g. model-card accuracy). All panel queries filter on the
`namespace` and `pod` variables.
"""

from __future__ import annotations

import json
from typing import Any

from grafana_foundation_sdk.builders import dashboard as db, prometheus as prom, stat, table, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DataSourceRef, VariableRefresh

from clipshield.service.metrics import METRICS
from monitoring.rules import ERROR_OUTCOME, JOB, OK_OUTCOME, REQUESTS, SLO, loaded_gauge, signal_counters, stage_histograms

UID = "clipshield-serving"
DS = DataSourceRef(type_val="prometheus", uid="${datasource}")
SEL = f'job="{JOB}", namespace=~"$namespace", pod=~"$pod"'
RATE = "$__rate_interval"
QUANTILES = (0.5, 0.9, 0.99)
# TorchServe frontend counters (k8s/base/metrics.yaml ts_metrics): cumulative microseconds -> legend name.
TS_LATENCY = {"ts_inference_latency_microseconds": "inference", "ts_queue_latency_microseconds": "queue"}
TS_REQUESTS = "ts_inference_requests_total"


def _q(expr: str, legend: str, ref: str) -> prom.Dataquery:
    return prom.Dataquery().expr(expr).legend_format(legend).ref_id(ref)


def _ts(title: str, unit: str, queries: list[prom.Dataquery], description: str, width: int = 12) -> timeseries.Panel:
    panel = timeseries.Panel().title(title).description(description).unit(unit).datasource(DS).span(width).height(8)
    for q in queries:
        panel = panel.with_target(q)
    return panel


def _stat(title: str, unit: str, expr: str, description: str) -> stat.Panel:
    query = prom.Dataquery().expr(expr).instant().legend_format("{{namespace}}").ref_id("A")
    return stat.Panel().title(title).description(description).unit(unit).datasource(DS).span(4).height(4).with_target(query)


def _sum_rate(metric: str, by: str, extra: str = "") -> str:
    return f"sum by ({by}) (rate({metric}{{{SEL}{extra}}}[{RATE}]))"


def _short(name: str) -> str:
    return name.removeprefix("clipshield_").removesuffix("_total").removesuffix("_seconds").replace("_", " ")


def overview_panels() -> list[Any]:
    """Stats: request rate, handler and front-end error ratios, whole-request mean, SLO violations, pods scraped, pods with a model."""
    ns = 'namespace=~"$namespace"'
    return [
        _stat("Requests / s", "reqps", f"sum by (namespace) (clipshield:requests:rate5m{{{ns}}})", "All outcomes, last 5 minutes."),
        _stat(
            "Server-error ratio (5m)",
            "percentunit",
            f"max by (namespace) (clipshield:request_errors:ratio_rate5m{{{ns}}})",
            "Share of requests with outcome=error in the handler (ClipshieldHighErrorRatio).",
        ),
        _stat(
            "Front-end 5xx ratio (5m)",
            "percentunit",
            f"max by (namespace) (clipshield:server_errors:ratio_rate5m{{{ns}}})",
            "Share of 5xx among all answers the server front end sent, those that never reached the handler included "
            "(TorchServe's 503 with no free worker or a full queue; ClipshieldHighErrorRatio).",
        ),
        _stat(
            "Whole request, mean (5m)",
            "s",
            f"max by (namespace) (clipshield:request_latency_mean_seconds:rate5m{{{ns}}})",
            "Mean whole-request latency as the front end measured it, queueing included (ClipshieldRequestLatencyHigh).",
        ),
        _stat(
            f"Over {SLO.threshold_s} s (1h)",
            "percentunit",
            f"max by (namespace) (clipshield:latency_slo_violations:ratio_rate1h{{{ns}}})",
            f"Share of {SLO.metric} observations over the SLO threshold; budget {1 - SLO.objective:.0%}.",
        ),
        _stat("Pods scraped", "none", f"sum by (namespace) (up{{{SEL}}})", "Serving pods whose metrics endpoint answers."),
        _stat(
            "Pods with a model",
            "none",
            f"count by (namespace) (count by (namespace, pod) ({loaded_gauge()}{{{SEL}}}))",
            f"Pods that reported {loaded_gauge()} (ClipshieldNoModelLoaded).",
        ),
    ]


def latency_panels() -> list[Any]:
    """p50/p90/p99 per pod for every stage histogram, and TorchServe's mean queue/inference latency."""
    panels = []
    for name in stage_histograms():
        queries = [
            _q(f"histogram_quantile({q}, {_sum_rate(name + '_bucket', 'pod, le')})", f"p{round(q * 100)} {{{{pod}}}}", chr(ord("A") + i))
            for i, q in enumerate(QUANTILES)
        ]
        panels.append(_ts(f"Latency: {_short(name)}", "s", queries, METRICS[name][1]))
    ts_queries = [
        _q(f"{_sum_rate(m, 'pod')} / {_sum_rate(TS_REQUESTS, 'pod')} / 1e6", f"{legend} {{{{pod}}}}", chr(ord("A") + i))
        for i, (m, legend) in enumerate(TS_LATENCY.items())
    ]
    panels.append(
        _ts(
            "TorchServe mean latency per request",
            "s",
            ts_queries,
            "Mean of TorchServe's frontend counters (inference includes queueing); not percentiles.",
        )
    )
    return panels


def request_panels() -> list[Any]:
    """Outcomes per second (all pods, stacked) and the server-error ratio per pod."""
    outcomes = _q(_sum_rate(REQUESTS, "outcome"), "{{outcome}}", "A")
    per_pod = _q(_sum_rate(REQUESTS, "pod, outcome"), "{{pod}} {{outcome}}", "A")
    failed, total = _sum_rate(REQUESTS, "pod", f', outcome="{ERROR_OUTCOME}"'), _sum_rate(REQUESTS, "pod")
    errors = _q(f"({failed} or {total} * 0) / {total}", "{{pod}}", "A")
    return [
        _ts("Request outcomes", "reqps", [outcomes], METRICS[REQUESTS][1]),
        _ts("Request outcomes per pod", "reqps", [per_pod], METRICS[REQUESTS][1]),
        _ts("Server-error ratio per pod", "percentunit", [errors], "outcome=error / all requests.", width=24),
    ]


def signal_panels() -> list[Any]:
    """Every non-request counter as a share of ok requests; every other histogram's quantiles."""
    panels = []
    ok = _sum_rate(REQUESTS, "pod", f', outcome="{OK_OUTCOME}"')
    for name in signal_counters():
        expr = f"({_sum_rate(name, 'pod')} or {ok} * 0) / {ok}"
        panels.append(
            _ts(
                f"{_short(name).capitalize()} ratio",
                "percentunit",
                [_q(expr, "{{pod}}", "A")],
                f"{METRICS[name][1]}, per successful request.",
            )
        )
    for name, (kind, help_text, _) in METRICS.items():
        if kind == "histogram" and name not in stage_histograms():
            queries = [
                _q(
                    f"histogram_quantile({q}, {_sum_rate(name + '_bucket', 'pod, le')})",
                    f"p{round(q * 100)} {{{{pod}}}}",
                    chr(ord("A") + i),
                )
                for i, q in enumerate(QUANTILES)
            ]
            panels.append(_ts(f"Distribution: {_short(name)}", "none", queries, help_text))
    return panels


def model_panels() -> list[Any]:
    """One table per gauge (model-card accuracy, runtime info, ...), a row per pod and label set."""
    panels = []
    for name, (kind, help_text, labels) in METRICS.items():
        if kind != "gauge":
            continue
        by = ", ".join(("pod",) + labels)
        query = prom.Dataquery().expr(f"max by ({by}) ({name}{{{SEL}}})").instant().format("table").ref_id("A")
        panels.append(
            table.Panel().title(_short(name).capitalize()).description(help_text).datasource(DS).span(24).height(8).with_target(query)
        )
    return panels


def variables() -> list[Any]:
    """Data source, namespace and pod (multi-select, all by default)."""
    ns_query = f'label_values(up{{job="{JOB}"}}, namespace)'
    pod_query = f'label_values(up{{job="{JOB}", namespace=~"$namespace"}}, pod)'
    return [
        db.DatasourceVariable("datasource").label("Data source").type("prometheus"),
        db.QueryVariable("namespace")
        .label("Namespace")
        .datasource(DS)
        .query(ns_query)
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .multi(True)
        .include_all(True),
        db.QueryVariable("pod")
        .label("Pod")
        .datasource(DS)
        .query(pod_query)
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .multi(True)
        .include_all(True),
    ]


def build_dashboard() -> dict[str, Any]:
    """The dashboard as a JSON-able dict (panel ids numbered in order)."""
    builder = (
        db.Dashboard("clipshield serving")
        .uid(UID)
        .tags(["clipshield"])
        .refresh("30s")
        .time("now-6h", "now")
        .timezone("utc")
        .description("Generated by monitoring (python -m monitoring.generate).")
    )
    for var in variables():
        builder = builder.with_variable(var)
    rows = (
        ("Overview", overview_panels()),
        ("Latency per stage", latency_panels()),
        ("Requests", request_panels()),
        ("Robustness signals", signal_panels()),
        ("Model", model_panels()),
    )
    next_id = 1
    for title, panels in rows:
        builder = builder.with_row(db.Row(title).id(next_id))
        next_id += 1
        for panel in panels:
            builder = builder.with_panel(panel.id(next_id))
            next_id += 1
    return json.loads(json.dumps(builder.build(), cls=JSONEncoder))


def dashboard_json() -> str:
    """The dashboard file's text: sorted keys, stable across runs."""
    return json.dumps(build_dashboard(), indent=1, sort_keys=True) + "\n"


def panel_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, expr) for every query target of every panel."""
    return [(p["title"], t["expr"]) for p in dashboard["panels"] for t in p.get("targets", []) if "expr" in t]
