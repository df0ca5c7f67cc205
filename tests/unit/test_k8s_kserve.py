"""The KServe InferenceService manifest (k8s/kserve/): schema, and agreement with the server it starts.

kubernetes-validate knows core kinds only, so the InferenceService is checked two ways, offline:
strictly against the OpenAPI models the kserve wheel ships (`kserve.models.V1beta1*`, whose pod
fields are `kubernetes.client` models): every key must be a known field with the declared type; and
its predictor's pod part as a core `Pod` with kubernetes-validate (required fields, enums).
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
FOLDER = REPO / "k8s" / "kserve"
K8S_VERSION = "1.32.0"
# Predictor fields that are KServe's own, not Kubernetes PodSpec fields.
KSERVE_ONLY = {
    "minReplicas",
    "maxReplicas",
    "scaleMetric",
    "scaleTarget",
    "scaleMetricType",
    "containerConcurrency",
    "timeout",
    "canaryTrafficPercent",
    "logger",
    "batcher",
    "deploymentStrategy",
    "annotations",
    "labels",
}

kserve_models = pytest.importorskip("kserve.models")
k8s_models = pytest.importorskip("kubernetes.client")


def _docs() -> dict[str, dict]:
    docs = {}
    for path in sorted(FOLDER.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs[doc["kind"]] = doc
    return docs


def _model(name: str) -> Any:
    cls = getattr(kserve_models, name, None) or getattr(k8s_models, name, None)
    assert cls is not None, f"no OpenAPI model {name} in kserve.models or kubernetes.client"
    return cls


def check(value: Any, type_name: str, path: str = "") -> list[str]:
    """Problems of `value` against an OpenAPI type name ('str', 'list[V1Container]', 'V1beta1PredictorSpec', ...)."""
    m = re.fullmatch(r"(?:list|List)\[(.+)\]", type_name)
    if m:
        return (
            [p for i, v in enumerate(value) for p in check(v, m.group(1), f"{path}[{i}]")]
            if isinstance(value, list)
            else [f"{path}: not a list"]
        )
    m = re.fullmatch(r"(?:dict\(str, |Dict\[str, )(.+)[)\]]", type_name)
    if m:
        return (
            [p for k, v in value.items() for p in check(v, m.group(1), f"{path}.{k}")]
            if isinstance(value, dict)
            else [f"{path}: not a map"]
        )
    prims: dict[str, type | tuple[type, ...]] = {"str": str, "int": int, "bool": bool, "float": (int, float)}
    if type_name in prims:
        ok = isinstance(value, prims[type_name]) and not (type_name != "bool" and isinstance(value, bool))
        return [] if ok else [f"{path}: {value!r} is not {type_name}"]
    if type_name == "object":  # IntOrString, quantities, raw extensions
        return []
    cls = _model(type_name)
    if not isinstance(value, dict):
        return [f"{path}: not an object ({type_name})"]
    by_json = {v: k for k, v in cls.attribute_map.items()}
    problems = [f"{path}.{key}: unknown field of {type_name}" for key in value if key not in by_json]
    for key, v in value.items():
        if key in by_json:
            problems += check(v, cls.openapi_types[by_json[key]], f"{path}.{key}")
    return problems


def test_inference_service_matches_the_kserve_models():
    isvc = _docs()["InferenceService"]
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
    assert check(isvc, "V1beta1InferenceService") == []


@pytest.mark.parametrize(
    "mutate,problem",
    [
        (lambda d: d["spec"]["predictor"]["containers"][0].update(imagePullPolcy="Always"), "unknown field"),
        (lambda d: d["spec"]["predictor"].update(minReplicas="2"), "is not int"),
        (lambda d: d["spec"]["predictor"]["containers"][0]["ports"][0].update(containerPort="8080"), "is not int"),
        (lambda d: d["spec"].update(predictors=d["spec"]["predictor"]), "unknown field"),
    ],
)
def test_the_schema_check_catches_mistakes(mutate, problem):
    isvc = copy.deepcopy(_docs()["InferenceService"])
    mutate(isvc)
    found = check(isvc, "V1beta1InferenceService")
    assert found and all(problem in p for p in found), found


def test_predictor_pod_part_and_service_account_pass_strict_core_validation():
    docs = _docs()
    predictor = docs["InferenceService"]["spec"]["predictor"]
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "clipshield"},
        "spec": {k: v for k, v in predictor.items() if k not in KSERVE_ONLY},
    }
    kubernetes_validate.validate(pod, K8S_VERSION, strict=True)
    kubernetes_validate.validate(docs["ServiceAccount"], K8S_VERSION, strict=True)
    assert set(yaml.safe_load((FOLDER / "kustomization.yaml").read_text())["resources"]) == {"serviceaccount.yaml", "inferenceservice.yaml"}


def test_container_starts_the_kserve_app_the_probes_ask():
    from clipshield.handlers.kserve.app import parse_args

    predictor = _docs()["InferenceService"]["spec"]["predictor"]
    (container,) = predictor["containers"]
    assert container["name"] == "kserve-container" and container["command"][-2:] == ["-m", "clipshield.handlers.kserve.app"]
    args = parse_args(container["args"])
    assert args.bundle == Path("/mnt/models")  # where KServe's storage initializer puts STORAGE_URI
    assert any(e["name"] == "STORAGE_URI" and e["value"] for e in container["env"])
    assert [p["containerPort"] for p in container["ports"]] == [args.host_port]
    for probe in ("startupProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": f"/v2/models/{args.model_name}/ready", "port": args.host_port}
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    env_threads = next(e for e in container["env"] if e["name"] == "CLIPSHIELD_ORT_THREADS")
    assert env_threads["valueFrom"]["resourceFieldRef"]["containerName"] == container["name"]
    assert predictor["securityContext"]["runAsNonRoot"] and container["securityContext"]["readOnlyRootFilesystem"]
