"""Metrics recording behind a small interface, so any server adapter can plug in its own backend.

The inference core calls a `MetricsSink`; the TorchServe adapter forwards to TorchServe's metrics
cache (exposed on its Prometheus endpoint, declared in `model_store/metrics.yaml`, which
`python -m monitoring.generate` writes from `METRICS`), another server
can use `PrometheusClientSink` (prometheus_client) directly, and tests use `RecordingSink`.
All names start with `clipshield_`; latencies are in seconds.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from typing import TYPE_CHECKING, Optional, Protocol, cast

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
    from prometheus_client.metrics import MetricWrapperBase

# name -> (kind, help, label names)
METRICS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "clipshield_decode_seconds": ("histogram", "Image decode + preprocess latency per request", ()),
    "clipshield_encode_seconds": ("histogram", "Image encoder latency per batch", ()),
    "clipshield_purify_seconds": ("histogram", "CLIPure-Cos purification latency per request", ()),
    "clipshield_head_seconds": ("histogram", "Zero-shot head latency per request (label encoding included)", ()),
    "clipshield_requests_total": ("counter", "Requests by outcome (ok, bad_input, too_large, unsupported_media, error)", ("outcome",)),
    "clipshield_prediction_shift": ("histogram", "Total-variation distance of class probabilities moved by purification", ()),
    "clipshield_anchor_score": ("histogram", "Cosine of the image embedding with the blank anchor", ()),
    "clipshield_flipped_total": ("counter", "Requests whose top-1 purification changed", ()),
    "clipshield_flagged_total": (
        "counter",
        "Requests flagged as possibly adversarial: the detector's score (model card attack_score) above its threshold",
        (),
    ),
    "clipshield_attack_score": (
        "histogram",
        "Detector score (logit; higher = more suspicious) of each request the detector ran on; its count is the scored requests",
        (),
    ),
    "clipshield_attack_score_seconds": ("histogram", "Detector latency per batch (its extra encoder passes included)", ()),
    "clipshield_model_accuracy": (
        "gauge",
        "Model-card accuracy per data set and attack (clipshield.service.card.attack_label)",
        ("dataset", "attack", "purified"),
    ),
    "clipshield_runtime_info": (
        "gauge",
        "1 per loaded model: ONNX Runtime execution provider actually running, onnxruntime package, "
        "bundle format, the clipshield version that exported it and the image encoder's number format (fp32, fp16, int8)",
        ("provider", "onnxruntime", "bundle_format", "built_by", "precision"),
    ),
}

# Whole-request metrics a server front end keeps itself, so failures that never reach the inference core
# (a 503 from a busy or restarting server, a 500 in the protocol layer) are counted too. The KServe app
# records these; TorchServe's frontend has its own (`Requests2XX/4XX/5XX`, `ts_inference_latency_microseconds`,
# `ts_inference_requests_total`, kept by `monitoring/torchserve_metrics.py`), so they are not in METRICS.
SERVER_METRICS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "clipshield_http_responses_total": ("counter", "Inference responses the server sent, by status class (2xx, 4xx, 5xx)", ("code_class",)),
    "clipshield_http_request_seconds": ("histogram", "Whole inference request latency in the server, body read to response", ()),
}

HANDLER_DIMENSIONS = ("ModelName", "Level")  # TorchServe dimensions emitted before a metric's own labels


def unit_of(name: str) -> str:
    """The unit TorchServe records for a metric, from its name: *_seconds, *_total (count), *_info,
    the attack score's own unit (a logit, not a ratio), else ratio."""
    if name == "clipshield_attack_score":
        return "score"
    for suffix, unit in (("_seconds", "seconds"), ("_total", "count"), ("_info", "info")):
        if name.endswith(suffix):
            return unit
    return "ratio"


# Histograms whose values are not latencies (prometheus_client's default buckets are 5 ms .. 10 s).
BUCKETS: dict[str, tuple[float, ...]] = {
    "clipshield_attack_score": (-8.0, -4.0, -2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 8.0, float("inf")),
}


class MetricsSink(Protocol):
    """What the inference core records; labels are small string dicts."""

    def observe(self, name: str, value: float, labels: Optional[dict[str, str]] = None) -> None: ...

    def increment(self, name: str, value: float = 1.0, labels: Optional[dict[str, str]] = None) -> None: ...

    def set_gauge(self, name: str, value: float, labels: Optional[dict[str, str]] = None) -> None: ...


MetricKey = tuple[str, tuple[tuple[str, str], ...]]


def _key(name: str, labels: Optional[dict[str, str]]) -> MetricKey:
    return (name, tuple(sorted((labels or {}).items())))


class NullSink:
    """Records nothing."""

    def observe(self, name: str, value: float, labels: Optional[dict[str, str]] = None) -> None:
        pass

    def increment(self, name: str, value: float = 1.0, labels: Optional[dict[str, str]] = None) -> None:
        pass

    def set_gauge(self, name: str, value: float, labels: Optional[dict[str, str]] = None) -> None:
        pass


class RecordingSink:
    """In-memory sink for tests and debugging: observations, counters and gauges by (name, labels)."""

    def __init__(self) -> None:
        self.observations: dict[MetricKey, list[float]] = defaultdict(list)
        self.counters: dict[MetricKey, float] = defaultdict(float)
        self.gauges: dict[MetricKey, float] = {}
        self._lock = threading.Lock()

    def observe(self, name: str, value: float, labels: Optional[dict[str, str]] = None) -> None:
        with self._lock:
            self.observations[_key(name, labels)].append(float(value))

    def increment(self, name: str, value: float = 1.0, labels: Optional[dict[str, str]] = None) -> None:
        with self._lock:
            self.counters[_key(name, labels)] += float(value)

    def set_gauge(self, name: str, value: float, labels: Optional[dict[str, str]] = None) -> None:
        with self._lock:
            self.gauges[_key(name, labels)] = float(value)

    def count(self, name: str, labels: Optional[dict[str, str]] = None) -> float:
        return self.counters.get(_key(name, labels), 0.0)


class PrometheusClientSink:
    """prometheus_client backend for adapters that expose /metrics themselves (not TorchServe): METRICS and SERVER_METRICS."""

    def __init__(self, registry: Optional[CollectorRegistry] = None) -> None:
        import prometheus_client as pc

        kinds = {"histogram": pc.Histogram, "counter": pc.Counter, "gauge": pc.Gauge}
        self._metrics: dict[str, MetricWrapperBase] = {}
        for name, (kind, help_text, label_names) in {**METRICS, **SERVER_METRICS}.items():
            short = name[: -len("_total")] if kind == "counter" else name
            extra = {"buckets": BUCKETS[name]} if name in BUCKETS else {}
            self._metrics[name] = kinds[kind](short, help_text, label_names, registry=registry, **extra)

    def _get(self, name: str, labels: Optional[dict[str, str]]) -> MetricWrapperBase:
        """The metric (its labelled child when `labels`); its kind is METRICS[name]'s, which the caller names."""
        metric = self._metrics[name]
        return metric.labels(**labels) if labels else metric

    def observe(self, name: str, value: float, labels: Optional[dict[str, str]] = None) -> None:
        cast("Histogram", self._get(name, labels)).observe(value)

    def increment(self, name: str, value: float = 1.0, labels: Optional[dict[str, str]] = None) -> None:
        cast("Counter", self._get(name, labels)).inc(value)

    def set_gauge(self, name: str, value: float, labels: Optional[dict[str, str]] = None) -> None:
        cast("Gauge", self._get(name, labels)).set(value)
