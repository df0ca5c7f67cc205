"""Monitoring as code: Prometheus rules, promtool unit tests and the Grafana dashboard.

Everything is derived from `service.metrics.METRICS` (and TorchServe's own metrics declared in
`k8s/base/metrics.yaml`); `python -m training.monitoring.generate` writes the files under
`k8s/monitoring/`, and `tests/unit/test_monitoring.py` checks they are current.
"""
