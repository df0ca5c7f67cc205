"""Monitoring and TorchServe configuration as code: Prometheus rules, promtool unit tests, the Grafana
dashboard, TorchServe's metrics.yaml and its config.properties (one settings table).

The metric files derive from `clipshield.service.metrics.METRICS` (plus TorchServe's own frontend counters,
`torchserve_metrics.TS_COUNTERS`), the properties files from `torchserve_config.SETTINGS`.
`python -m monitoring.generate` writes them under `k8s/` and `model_store/`;
`tests/unit/test_monitoring.py` and `tests/unit/test_service_metrics.py` check they are current.
"""
