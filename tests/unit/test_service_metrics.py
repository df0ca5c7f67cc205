"""Metric names: declared in model_store/metrics.yaml exactly as the service and handler emit them.

Both metrics.yaml files and the three config.properties are generated (`python -m monitoring.generate`):
the committed text must be what the generator writes now.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from clipshield.service.metrics import METRICS, PrometheusClientSink, RecordingSink
from monitoring.torchserve_config import GENERATED, OVERLAYS, properties

REPO = Path(__file__).resolve().parents[2]
STORE = REPO / "model_store"


def test_metrics_yaml_declares_every_metric_with_its_dimensions():
    doc = yaml.safe_load((STORE / "metrics.yaml").read_text())
    declared = {m["name"]: (kind, m["dimensions"]) for kind, items in doc["model_metrics"].items() for m in items}
    for name, (kind, _help, labels) in METRICS.items():
        assert name.startswith("clipshield_")
        assert declared[name] == (kind, ["ModelName", "Level", *labels]), name


@pytest.mark.parametrize("path", ["model_store/metrics.yaml", "k8s/base/metrics.yaml"])
def test_metrics_yaml_is_generated_from_the_metric_list(path):
    from monitoring.torchserve_metrics import metrics_config

    assert yaml.safe_load((REPO / path).read_text()) == metrics_config(), f"{path} is stale: run python -m monitoring.generate"


@pytest.mark.parametrize("path, place", sorted(GENERATED.items()))
def test_config_properties_are_generated_from_one_table(path, place):
    assert (REPO / path).read_text() == properties(place), f"{path} is stale: run python -m monitoring.generate"


def test_overlays_patch_only_what_differs():
    def keys(place: str) -> dict[str, str]:
        return dict(ln.split("=", 1) for ln in properties(place).splitlines() if not ln.startswith("#"))

    base, gpu = keys("cluster"), keys("gpu")
    assert {k for k in base.keys() | gpu.keys() if base.get(k) != gpu.get(k)} == set(OVERLAYS["gpu"]) == {"number_of_gpu"}
    assert gpu["number_of_gpu"] == "1" and base["number_of_gpu"] == "0"


def test_config_properties_security_defaults():
    props = dict(
        line.split("=", 1) for line in (STORE / "config.properties").read_text().splitlines() if "=" in line and not line.startswith("#")
    )
    assert props["management_address"].startswith("http://127.0.0.1:")
    assert props["metrics_address"].startswith("http://127.0.0.1:")
    assert props["metrics_mode"] == "prometheus" and props["enable_model_api"] == "true"  # local refresh
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
