"""Metric names: declared in model_store/metrics.yaml exactly as the service and handler emit them."""
from __future__ import annotations

from pathlib import Path

import yaml

from service.metrics import METRICS, PrometheusClientSink, RecordingSink

STORE = Path(__file__).resolve().parents[2] / "model_store"


def test_metrics_yaml_declares_every_metric_with_its_dimensions():
    doc = yaml.safe_load((STORE / "metrics.yaml").read_text())
    declared = {m["name"]: (kind, m["dimensions"]) for kind, items in doc["model_metrics"].items() for m in items}
    for name, (kind, _help, labels) in METRICS.items():
        assert name.startswith("clipshield_")
        assert declared[name] == (kind, ["ModelName", "Level", *labels]), name


def test_config_properties_security_defaults():
    props = dict(
        line.split("=", 1) for line in (STORE / "config.properties").read_text().splitlines() if "=" in line and not line.startswith("#")
    )
    assert props["management_address"].startswith("http://127.0.0.1:")
    assert props["metrics_address"].startswith("http://127.0.0.1:")
    assert props["metrics_mode"] == "prometheus" and props["enable_model_api"] == "false"
    assert props["default_workers_per_model"] == "2" and int(props["job_queue_size"]) > 0
    assert props["allowed_urls"].startswith("^file://")


def test_prometheus_client_sink_exports_names():
    import prometheus_client as pc

    registry = pc.CollectorRegistry()
    sink = PrometheusClientSink(registry)
    sink.observe("clipshield_encode_seconds", 0.01)
    sink.increment("clipshield_requests_total", labels={"outcome": "ok"})
    sink.set_gauge("clipshield_model_accuracy", 0.5, {"dataset": "d", "attack": "none", "purified": "false"})
    text = pc.generate_latest(registry).decode()
    assert 'clipshield_requests_total{outcome="ok"} 1.0' in text
    assert "clipshield_encode_seconds_count 1.0" in text
    assert 'clipshield_model_accuracy{attack="none",dataset="d",purified="false"} 0.5' in text


def test_recording_sink_counts():
    sink = RecordingSink()
    sink.increment("clipshield_flagged_total")
    sink.increment("clipshield_flagged_total", 2)
    assert sink.count("clipshield_flagged_total") == 3
