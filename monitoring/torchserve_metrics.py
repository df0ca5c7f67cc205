"""TorchServe's `metrics.yaml`, generated from `clipshield.service.metrics.METRICS`.

In Prometheus mode TorchServe drops backend (handler) metrics it has not been told about, so every
`clipshield_*` metric is declared under `model_metrics` with the dimensions the handler emits
(`ModelName`, `Level`, then the metric's own labels; TorchServe adds `Hostname`). The frontend
counters under `ts_metrics` are TorchServe's own: its responses by status class (the alerts' server-error
ratio) and its request count and latency (the dashboard, the whole-request latency objective). The same text
goes to `model_store/` (local TorchServe) and `k8s/base/` (the ConfigMap).
"""

from __future__ import annotations

from typing import Any

from clipshield.service.metrics import HANDLER_DIMENSIONS, METRICS, unit_of

TS_DIMENSIONS = ["model_name", "model_version", "hostname"]
# TorchServe frontend counters kept on the Prometheus endpoint: name -> unit
TS_COUNTERS = {
    "ts_inference_requests_total": "Count",
    "ts_inference_latency_microseconds": "Microseconds",
    "ts_queue_latency_microseconds": "Microseconds",
}
# TorchServe's frontend responses by status class (every request it answered, those that never reached a
# worker too: a 503 when no worker is free, a 500 from the frontend). Their own dimensions, as TorchServe's defaults.
TS_RESPONSE_COUNTERS = {"2xx": "Requests2XX", "4xx": "Requests4XX", "5xx": "Requests5XX"}
TS_RESPONSE_DIMENSIONS = ["Level", "Hostname"]
_KINDS = ("counter", "gauge", "histogram")  # TorchServe's metric types, in the file's order


def metrics_config() -> dict[str, Any]:
    """The `metrics.yaml` document: TorchServe's counters and every `clipshield_*` metric by kind.

    Metrics are listed by name, not in `METRICS`' insertion order, so the file does not change when the
    same metrics are declared in another order.
    """
    model_metrics: dict[str, list[dict[str, Any]]] = {kind: [] for kind in _KINDS}
    for name, (kind, _help, labels) in sorted(METRICS.items()):
        model_metrics[kind].append({"name": name, "unit": unit_of(name), "dimensions": [*HANDLER_DIMENSIONS, *labels]})
    return {
        "dimensions": list(HANDLER_DIMENSIONS),
        "ts_metrics": {
            "counter": [{"name": n, "unit": "Count", "dimensions": TS_RESPONSE_DIMENSIONS} for n in TS_RESPONSE_COUNTERS.values()]
            + [{"name": n, "unit": u, "dimensions": TS_DIMENSIONS} for n, u in TS_COUNTERS.items()]
        },
        "model_metrics": {kind: items for kind, items in model_metrics.items() if items},
    }
