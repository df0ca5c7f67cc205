"""Monitoring as code: generated files are current, rules pass promtool, dashboard queries are real.

promtool is required (a missing binary fails with install instructions: `make tools`).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from clipshield.service import metrics as service_metrics
from monitoring import dashboard, generate, rule_tests, rules
from tests.integration.prometheus_helpers import promtool

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
RENDERED = K8S / "rendered" / "monitoring.yaml"
TARGET_LABELS = {"job", "namespace", "pod", "instance", "le", "outcome", "model_name", "hostname"}
CLIENT_APPLY_LIMIT = 262144  # kubectl's last-applied annotation: a bigger dashboard needs server-side apply


def _rendered() -> dict[str, dict]:
    return {d["kind"]: d for d in yaml.safe_load_all(RENDERED.read_text()) if d}


def _rule_dir(tmp_path: Path, groups_text: str | None = None) -> Path:
    """tmp_path with the rule file (extracted from the PrometheusRule) and the promtool test file."""
    resource = (K8S / "monitoring" / generate.RULE_RESOURCE).read_text()
    (tmp_path / rule_tests.RULE_FILE).write_text(groups_text or generate.rule_file_from_resource(resource))
    shutil.copy(K8S / "monitoring" / generate.RULE_TESTS, tmp_path / "tests.yaml")
    return tmp_path


def _known_metrics() -> set[str]:
    names = {"up"}
    for name, (kind, _, _) in {**service_metrics.METRICS, **service_metrics.SERVER_METRICS}.items():
        names |= {name} | ({f"{name}_{s}" for s in ("bucket", "count", "sum")} if kind == "histogram" else set())
    ts = yaml.safe_load((K8S / "base" / "metrics.yaml").read_text())["ts_metrics"]
    names |= {m["name"] for items in ts.values() for m in items}
    recorded = {r["record"] for g in rules.rule_groups() for r in g["rules"] if "record" in r}
    return names | recorded


def _referenced_metrics(expr: str) -> set[str]:
    bare = re.sub(r'"[^"]*"', '""', expr)
    return set(re.findall(r"([a-zA-Z_:][\w:]*)\s*\{", bare)) | set(re.findall(r"\b((?:clipshield|ts)[_:][\w:]*)", bare))


def _known_labels() -> set[str]:
    declared = {**service_metrics.METRICS, **service_metrics.SERVER_METRICS}
    return TARGET_LABELS | {label for _, _, labels in declared.values() for label in labels}


def test_generated_files_are_current():
    assert generate.stale() == [], "run `make monitoring` (python -m monitoring.generate, then make k8s-render)"


def test_rendered_kustomization_matches_generated_files():
    docs = _rendered()
    rule = yaml.safe_load((K8S / "monitoring" / generate.RULE_RESOURCE).read_text())
    assert docs["PrometheusRule"]["spec"] == rule["spec"], "k8s/rendered/monitoring.yaml is stale: make k8s-render"
    cm = docs["ConfigMap"]
    assert cm["data"] == {"clipshield-serving.json": (K8S / "monitoring" / generate.DASHBOARD).read_text()}
    kubectl = shutil.which("kubectl")  # CI may lack kubectl: the structural checks above still catch staleness
    if kubectl is not None:
        out = subprocess.run([kubectl, "kustomize", str(K8S / "monitoring")], capture_output=True, text=True, timeout=60, check=True).stdout
        assert out == RENDERED.read_text(), "k8s/rendered/monitoring.yaml is stale: make k8s-render"


def test_dashboard_configmap_is_valid_and_found_by_the_sidecar():
    cm = _rendered()["ConfigMap"]
    kubernetes_validate.validate(cm, "1.32.0", strict=True)
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    text = cm["data"]["clipshield-serving.json"]
    assert len(text.encode()) < CLIENT_APPLY_LIMIT
    board = json.loads(text)
    assert board["uid"] == dashboard.UID and board["panels"]
    assert len({p["id"] for p in board["panels"]}) == len(board["panels"])


def test_service_monitor_scrapes_the_serving_metrics_port():
    mon = _rendered()["ServiceMonitor"]
    cpu = [d for d in yaml.safe_load_all((K8S / "rendered" / "cpu.yaml").read_text()) if d]
    svc = next(d for d in cpu if d["kind"] == "Service")
    dep = next(d for d in cpu if d["kind"] == "Deployment")
    assert mon["metadata"]["namespace"] == svc["metadata"]["namespace"]
    assert mon["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert svc["metadata"]["name"] == rules.JOB  # the Operator's job label is the Service name
    (endpoint,) = mon["spec"]["endpoints"]
    port = next(p for p in svc["spec"]["ports"] if p["name"] == endpoint["port"])
    container_ports = {p["name"]: p["containerPort"] for c in dep["spec"]["template"]["spec"]["containers"] for p in c["ports"]}
    assert container_ports[port["targetPort"]] == port["port"] == 8082
    assert endpoint["path"] == dep["spec"]["template"]["metadata"]["annotations"]["prometheus.io/path"]


def test_promtool_checks_the_rule_file(tmp_path):
    result = promtool("check", "rules", rule_tests.RULE_FILE, cwd=_rule_dir(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    n_rules = sum(len(g["rules"]) for g in rules.rule_groups())
    assert f"SUCCESS: {n_rules} rules found" in result.stdout


def test_promtool_unit_tests_pass(tmp_path):
    result = promtool("test", "rules", "tests.yaml", cwd=_rule_dir(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_firing_and_a_quiet_case():
    alerts = {r["alert"] for g in rules.rule_groups() for r in g["rules"] if "alert" in r}
    cases = [t for test in rule_tests.unit_tests()["tests"] for t in test.get("alert_rule_test", [])]
    fires = {c["alertname"] for c in cases if c["exp_alerts"]}
    quiet = {c["alertname"] for c in cases if not c["exp_alerts"]}
    assert fires == alerts and quiet == alerts


@pytest.mark.parametrize("broken_expr", ["vector(1) < 0", "vector(1)"], ids=["never-fires", "always-fires"])
def test_promtool_tests_catch_a_broken_alert(tmp_path, broken_expr):
    groups = rules.rule_groups()
    for rule in groups[1]["rules"]:
        rule["expr"] = broken_expr
    broken = generate.to_yaml({"groups": groups})
    result = promtool("test", "rules", "tests.yaml", cwd=_rule_dir(tmp_path, broken))
    assert result.returncode != 0
    failed = set(re.findall(r"alertname: (\w+)", result.stdout + result.stderr))
    assert failed == {r["alert"] for r in groups[1]["rules"]}, result.stdout  # every alert's tests noticed


def test_dashboard_and_rules_reference_only_existing_metrics_and_labels():
    board = dashboard.build_dashboard()
    exprs = [e for _, e in dashboard.panel_queries(board)] + [r["expr"] for g in rules.rule_groups() for r in g["rules"]]
    known, labels = _known_metrics(), _known_labels()
    for expr in exprs:
        unknown = _referenced_metrics(expr) - known
        assert not unknown, f"{expr}: {sorted(unknown)} not declared in service/metrics.py, k8s/base/metrics.yaml or the rules"
        for clause in re.findall(r"\b(?:by|on|ignoring)\s*\(([^)]*)\)", expr):
            assert {x.strip() for x in clause.split(",")} <= labels, expr
    legends = [t.get("legendFormat", "") for p in board["panels"] for t in p.get("targets", [])]
    assert set(re.findall(r"\{\{\s*(\w+)\s*\}\}", "".join(legends))) <= labels


def test_dashboard_queries_parse(tmp_path):
    board = dashboard.build_dashboard()
    subst = {"$__rate_interval": "5m", "$namespace": ".*", "$pod": ".*"}
    exprs = []
    for _, expr in dashboard.panel_queries(board):
        for var, value in subst.items():
            expr = expr.replace(var, value)
        assert "$" not in expr, expr
        exprs.append(expr)
    as_rules = {"groups": [{"name": "dashboard", "rules": [{"record": f"panel:q{i}", "expr": e} for i, e in enumerate(exprs)]}]}
    (tmp_path / "queries.yaml").write_text(generate.to_yaml(as_rules))
    result = promtool("check", "rules", "queries.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_covers_stages_outcomes_signals_and_pods():
    board = dashboard.build_dashboard()
    queries = dashboard.panel_queries(board)
    text = " ".join(e for _, e in queries)
    for name in service_metrics.METRICS:  # every declared metric is on the dashboard
        assert name in text, name
    for name in rules.stage_histograms():
        stage = [e for _, e in queries if f"{name}_bucket" in e]
        assert len(stage) == 3 and all("by (pod, le)" in e for e in stage), name
    raw = [e for _, e in queries if "clipshield:" not in e]
    assert all('pod=~"$pod"' in e for e in raw)  # every raw query follows the pod selector
    assert {v["name"] for v in board["templating"]["list"]} == {"datasource", "namespace", "pod"}


def test_generation_follows_service_metrics(monkeypatch):
    monkeypatch.delitem(service_metrics.METRICS, "clipshield_prediction_shift", raising=False)
    monkeypatch.setitem(service_metrics.METRICS, "clipshield_extra_seconds", ("histogram", "A new stage", ()))
    text = dashboard.dashboard_json() + generate.to_yaml(rules.rule_groups())
    assert "clipshield_prediction_shift" not in text
    assert "clipshield_extra_seconds_bucket" in text and "clipshield:extra_seconds:p99_rate5m" in text
    monkeypatch.delitem(service_metrics.METRICS, "clipshield_flagged_total")
    with pytest.raises(rules.MonitoringConfigError, match="clipshield_flagged_total"):
        rules.rule_groups()


def test_missing_promtool_fails_with_install_hint(monkeypatch):
    from tests.integration.prometheus_helpers import require_tool

    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(pytest.fail.Exception, match="make tools"):
        require_tool("promtool")
