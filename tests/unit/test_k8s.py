"""Kubernetes manifests: strict schema validation of every overlay, deployment invariants, probe script.

The rendered overlays are committed in k8s/rendered/ so CI validates them without kubectl; where
kubectl is available, the test also re-renders each overlay and fails on drift.
"""

from __future__ import annotations

import http.server
import importlib.util
import json
import re
import shutil
import subprocess
import threading
from pathlib import Path
from typing import ClassVar

import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
OVERLAYS = ("cpu", "gpu")
K8S_VERSION = "1.32.0"  # validate against this Kubernetes version's schemas (bundled, offline)
FIXTURES = REPO / "tests" / "fixtures" / "k8s"


def _rendered_text(overlay: str) -> str:
    return (K8S / "rendered" / f"{overlay}.yaml").read_text()


def _docs(overlay: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(_rendered_text(overlay)) if d]


def _one(docs: list[dict], kind: str) -> dict:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def _container(docs: list[dict], name: str = "torchserve") -> dict:
    spec = _one(docs, "Deployment")["spec"]["template"]["spec"]
    return next(c for c in spec["containers"] if c["name"] == name)


def _properties(docs: list[dict]) -> dict[str, str]:
    cm_name = next(v["configMap"]["name"] for v in _one(docs, "Deployment")["spec"]["template"]["spec"]["volumes"] if v["name"] == "config")
    cm = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == cm_name)
    lines = [ln for ln in cm["data"]["config.properties"].splitlines() if ln.strip() and not ln.startswith("#")]
    return dict(ln.split("=", 1) for ln in lines)


def _cpu_quantity(q: str) -> float:
    return float(q[:-1]) / 1000 if q.endswith("m") else float(q)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rendered_overlay_is_up_to_date(overlay):
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed: validating the committed render only")
    out = subprocess.run(
        [kubectl, "kustomize", str(K8S / "overlays" / overlay)], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert out == _rendered_text(overlay), f"k8s/rendered/{overlay}.yaml is stale: re-render it (docs/deploy.md)"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_passes_strict_validation(overlay):
    docs = _docs(overlay)
    assert {d["kind"] for d in docs} >= {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "ConfigMap",
        "ServiceAccount",
        "NetworkPolicy",
        "Namespace",
    }
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_broken_manifests_are_rejected():
    unknown_field = yaml.safe_load((FIXTURES / "broken-unknown-field.yaml").read_text())
    wrong_type = yaml.safe_load((FIXTURES / "broken-wrong-type.yaml").read_text())
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(wrong_type, K8S_VERSION, strict=True)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(unknown_field, K8S_VERSION, strict=True)
    kubernetes_validate.validate(unknown_field, K8S_VERSION, strict=False)  # only strict mode catches typos


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rollout_is_zero_downtime(overlay):
    docs = _docs(overlay)
    dep = _one(docs, "Deployment")
    assert dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert "replicas" not in dep["spec"]  # the HPA owns the replica count
    c = _container(docs)
    pre_stop = c["lifecycle"]["preStop"]["exec"]["command"]
    drain = int(re.search(r"sleep (\d+)", " ".join(pre_stop)).group(1))
    assert drain > 0 and dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > drain
    # the image's PID 1 (TorchServe's Python launcher) ignores SIGTERM: the hook stops the Java front end itself
    assert "torchserve --stop" in " ".join(pre_stop)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_gate_on_loaded_workers(overlay):
    docs = _docs(overlay)
    c = _container(docs)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert probe in c, f"{probe} missing"
    for probe in ("startupProbe", "readinessProbe"):
        cmd = c[probe]["exec"]["command"]
        assert cmd[-1] == "ready" and cmd[-2].endswith("probe.py")
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300  # slow model loads
    probes_cm = next(d for d in docs if d["kind"] == "ConfigMap" and "probe.py" in d.get("data", {}))
    assert probes_cm["data"]["probe.py"] == (K8S / "base" / "probes" / "probe.py").read_text()
    mount = next(m for m in c["volumeMounts"] if m["name"] == "probes")
    assert c["readinessProbe"]["exec"]["command"][1] == f"{mount['mountPath']}/probe.py"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_resources_and_threads(overlay):
    docs = _docs(overlay)
    spec = _one(docs, "Deployment")["spec"]["template"]["spec"]
    for c in spec["containers"] + spec.get("initContainers", []):
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(c["resources"][kind]), f"{c['name']}: {kind} incomplete"
    c = _container(docs)
    cpu_limit = _cpu_quantity(c["resources"]["limits"]["cpu"])
    assert cpu_limit == int(cpu_limit), "CPU limit must be whole cores so the thread count equals it"
    env = {e["name"]: e for e in c["env"]}
    for var in ("CLIPSHIELD_ORT_THREADS", "OMP_NUM_THREADS"):
        ref = env[var].get("valueFrom", {}).get("resourceFieldRef")
        if ref is not None:
            assert ref["resource"] == "limits.cpu" and ref["containerName"] == c["name"] and str(ref["divisor"]) == "1"
        else:
            assert int(env[var]["value"]) == int(cpu_limit)


def test_gpu_overlay_requests_a_gpu_and_tells_torchserve():
    docs = _docs("gpu")
    assert _container(docs)["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert _properties(docs)["number_of_gpu"] == "1"
    assert _properties(_docs("cpu"))["number_of_gpu"] == "0"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pod_security(overlay):
    docs = _docs(overlay)
    dep = _one(docs, "Deployment")
    pod = dep["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    sa = _one(docs, "ServiceAccount")
    assert sa["automountServiceAccountToken"] is False and pod["serviceAccountName"] == sa["metadata"]["name"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    for c in pod["containers"] + pod.get("initContainers", []):
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]
    writable = {m["mountPath"] for m in _container(docs)["volumeMounts"] if not m.get("readOnly")}
    assert {"/tmp", _container(docs)["workingDir"]} <= writable  # what TorchServe writes to
    ns = _one(docs, "Namespace")
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_hpa_pdb_and_metrics_wiring(overlay):
    docs = _docs(overlay)
    dep = _one(docs, "Deployment")
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    ports = {p["name"]: p["containerPort"] for p in _container(docs)["ports"]}

    svc = _one(docs, "Service")
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    assert {p["name"] for p in svc["spec"]["ports"]} == {"inference", "metrics"}  # management stays private

    pdb = _one(docs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    hpa = _one(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": dep["metadata"]["name"]}
    assert hpa["spec"]["minReplicas"] >= 2 and hpa["spec"]["minReplicas"] > pdb["spec"]["minAvailable"]

    ann = dep["spec"]["template"]["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true" and int(ann["prometheus.io/port"]) == ports["metrics"]
    props = _properties(docs)
    assert props["metrics_mode"] == "prometheus"
    for key, port in (("inference_address", "inference"), ("management_address", "management"), ("metrics_address", "metrics")):
        assert props[key].endswith(f":{ports[port]}")
    store = next(m["mountPath"] for m in _container(docs)["volumeMounts"] if m["name"] == "model-store")
    assert props["model_store"] == store and props["load_models"].startswith("clipshield=")
    for key in ("default_workers_per_model", "job_queue_size", "allowed_urls", "disable_token_authorization"):
        assert key in props
    init = dep["spec"]["template"]["spec"]["initContainers"][0]
    assert any(m["name"] == "model-store" for m in init["volumeMounts"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_metrics_config_is_mounted_and_matches_serving(overlay):
    docs = _docs(overlay)
    props = _properties(docs)
    mount = next(m["mountPath"] for m in _container(docs)["volumeMounts"] if m["name"] == "config")
    assert props["metrics_config"] == f"{mount}/metrics.yaml"
    cm = next(d for d in docs if d["kind"] == "ConfigMap" and "config.properties" in d.get("data", {}))
    assert cm["data"]["metrics.yaml"] == (K8S / "base" / "metrics.yaml").read_text()
    serving = REPO / "model_store" / "metrics.yaml"  # both generated from service/metrics.py
    assert serving.read_text() == (K8S / "base" / "metrics.yaml").read_text(), "run python -m monitoring.generate"


def test_gpu_config_differs_from_base_only_in_gpu_count():
    def keys(path: Path) -> dict[str, str]:
        lines = [ln for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
        return dict(ln.split("=", 1) for ln in lines)

    base, gpu = keys(K8S / "base" / "config.properties"), keys(K8S / "overlays" / "gpu" / "config.properties")
    assert {k for k in base.keys() | gpu.keys() if base.get(k) != gpu.get(k)} == {"number_of_gpu"}


def test_dockerfile_is_multistage_pinned_and_non_root():
    text = (REPO / "Dockerfile").read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)", text, flags=re.M))
    froms = re.findall(r"^FROM (\S+) AS (\w+)", text, flags=re.M)
    assert len(froms) >= 2
    for image, _ in froms:
        resolved = args.get(image.strip("${}"), image)
        assert re.search(r":\d[\w.-]*$|@sha256:", resolved), f"base image {resolved} is not pinned"
    last_stage = text.split(f"FROM {froms[-1][0]} AS {froms[-1][1]}")[1]
    user = re.findall(r"^USER (\S+)", last_stage, flags=re.M)
    assert user and user[-1].split(":")[0] not in ("0", "root")


def test_image_build_context_holds_every_package():
    """The folder move once left the images copying 3 of the 10 package folders (pip install . then fails):
    every folder of tests/layout.py must pass .dockerignore's allow-list, and the build stages copy the context."""
    from tests.layout import PACKAGES

    allowed = {line[1:].rstrip("/") for line in (REPO / ".dockerignore").read_text().splitlines() if line.startswith("!")}
    assert set(PACKAGES) | {"pyproject.toml", "README.md"} <= allowed, sorted(set(PACKAGES) - allowed)
    text = (REPO / "Dockerfile").read_text()
    for stage in ("build", "build-kserve"):
        body = text.split(f" AS {stage}\n", 1)[1].split("\nFROM ", 1)[0]
        assert re.search(r"^COPY \. \./$", body, flags=re.M) and "pip install" in body, stage


# --- the probe script's behaviour against a fake TorchServe management API ---


def _load_probe():
    spec = importlib.util.spec_from_file_location("k8s_probe", K8S / "base" / "probes" / "probe.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _FakeTorchServe(http.server.BaseHTTPRequestHandler):
    workers: ClassVar[list[dict]] = []
    seen_auth: ClassVar[list] = []

    def do_GET(self):  # the name http.server dispatches GET to
        type(self).seen_auth.append(self.headers.get("Authorization"))
        if self.path == "/models/clipshield":
            body, code = json.dumps([{"modelName": "clipshield", "workers": type(self).workers}]).encode(), 200
        elif self.path == "/ping":
            body, code = b'{"status": "Healthy"}', 200
        else:
            body, code = b'{"code": 404}', 404
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture()
def fake_torchserve():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeTorchServe)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_probe_ready_only_with_ready_workers(fake_torchserve, tmp_path, capsys):
    probe = _load_probe()
    env = {
        "CLIPSHIELD_PROBE_MANAGEMENT": fake_torchserve,
        "CLIPSHIELD_PROBE_INFERENCE": fake_torchserve,
        "CLIPSHIELD_KEY_FILE": str(tmp_path / "absent.json"),
    }
    _FakeTorchServe.workers = []  # frontend up, model registered, no worker yet: /ping would say Healthy
    assert probe.main(["ready"], env) == 1
    _FakeTorchServe.workers = [{"id": "9000", "status": "UNLOADING"}]
    assert probe.main(["ready"], env) == 1
    _FakeTorchServe.workers = [{"id": "9000", "status": "READY"}]
    assert probe.main(["ready"], env) == 0
    assert "1/1 workers READY" in capsys.readouterr().out
    assert probe.main(["ready"], {**env, "CLIPSHIELD_PROBE_MIN_WORKERS": "2"}) == 1
    assert probe.main(["ready"], {**env, "CLIPSHIELD_MODEL_NAME": "other"}) == 1  # 404: not registered
    assert probe.main(["live"], env) == 0
    assert probe.main(["bogus"], env) == 2


def test_probe_sends_key_and_fails_when_server_is_down(fake_torchserve, tmp_path):
    probe = _load_probe()
    key_file = tmp_path / "key_file.json"
    key_file.write_text(json.dumps({"management": {"key": "m-key"}, "inference": {"key": "i-key"}}))
    env = {
        "CLIPSHIELD_PROBE_MANAGEMENT": fake_torchserve,
        "CLIPSHIELD_PROBE_INFERENCE": fake_torchserve,
        "CLIPSHIELD_KEY_FILE": str(key_file),
    }
    _FakeTorchServe.workers = [{"id": "9000", "status": "READY"}]
    _FakeTorchServe.seen_auth = []
    assert probe.main(["ready"], env) == 0 and probe.main(["live"], env) == 0
    assert _FakeTorchServe.seen_auth == ["Bearer m-key", "Bearer i-key"]
    down = {
        **env,
        "CLIPSHIELD_PROBE_MANAGEMENT": "http://127.0.0.1:9",
        "CLIPSHIELD_PROBE_INFERENCE": "http://127.0.0.1:9",
        "CLIPSHIELD_PROBE_TIMEOUT": "1",
    }
    assert probe.main(["ready"], down) == 1 and probe.main(["live"], down) == 1
