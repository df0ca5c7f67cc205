"""Execution providers chosen by configuration: parsing, environment, and both policies on a CPU-only host.

This machine's onnxruntime has no CUDAExecutionProvider, which is exactly the case under test:
CUDA requested where none exists. The tests check that premise instead of assuming it.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

from clipshield.service.errors import ConfigError, ModelLoadError
from clipshield.service.settings import RuntimeConfig, ServingConfig, load_serving_config, parse_providers

ort = pytest.importorskip("onnxruntime")
NO_CUDA = "CUDAExecutionProvider" not in ort.get_available_providers()


def test_runtime_config_defaults_and_validation():
    cfg = RuntimeConfig()
    assert cfg.providers == ("cpu",) and cfg.provider_policy == "fail"
    assert RuntimeConfig(providers=("cuda", "cpu"), provider_policy="fallback").providers == ("cuda", "cpu")
    with pytest.raises(ValueError, match="'cuda' or 'cpu'"):
        RuntimeConfig(providers=("tpu",))
    with pytest.raises(ValueError, match="'fail' or 'fallback'"):
        RuntimeConfig(provider_policy="ignore")
    with pytest.raises(ValueError):
        RuntimeConfig(providers=())
    round_trip = ServingConfig.model_validate_json(ServingConfig(runtime=RuntimeConfig(providers=("cuda", "cpu"))).model_dump_json())
    assert round_trip.runtime.providers == ("cuda", "cpu")


def test_parse_providers_names_allowed_values():
    assert parse_providers(" CUDA , cpu ") == ("cuda", "cpu")
    for bad in ("", "gpu", "cuda,cuda", "cpu,,rocm"):
        with pytest.raises(ConfigError, match=r"\['cuda', 'cpu'\]"):
            parse_providers(bad)


def test_environment_overrides_archive_providers(tmp_path):
    path = tmp_path / "serving.json"
    path.write_text(ServingConfig().model_dump_json())
    env = {"CLIPSHIELD_ORT_PROVIDERS": "cuda,cpu", "CLIPSHIELD_ORT_PROVIDER_POLICY": "fallback", "CLIPSHIELD_ORT_THREADS": "3"}
    runtime = load_serving_config(path, env).runtime
    assert (runtime.providers, runtime.provider_policy, runtime.intra_op_threads) == (("cuda", "cpu"), "fallback", 3)
    assert load_serving_config(path, {"CLIPSHIELD_ORT_PROVIDERS": "  "}).runtime.providers == ("cpu",)  # empty: ignored
    with pytest.raises(ConfigError, match=r"CLIPSHIELD_ORT_PROVIDERS|execution providers"):
        load_serving_config(path, {"CLIPSHIELD_ORT_PROVIDERS": "tensorcore"})
    with pytest.raises(ConfigError, match=r"\['fail', 'fallback'\]"):
        load_serving_config(path, {"CLIPSHIELD_ORT_PROVIDER_POLICY": "maybe"})


def test_select_providers_policies():
    from clipshield.service.runtime import select_providers

    cpu_only = ["AzureExecutionProvider", "CPUExecutionProvider"]
    assert select_providers(RuntimeConfig(providers=("cpu",)), cpu_only) == ["CPUExecutionProvider"]
    both = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert select_providers(RuntimeConfig(providers=("cuda", "cpu")), both) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    with pytest.raises(ModelLoadError) as err:
        select_providers(RuntimeConfig(providers=("cuda", "cpu")), cpu_only)
    message = str(err.value)
    assert "'cuda' (CUDAExecutionProvider) is not available" in message
    assert "CPUExecutionProvider" in message and "installed: onnxruntime" in message and "onnxruntime-gpu" in message
    fallback = RuntimeConfig(providers=("cuda", "cpu"), provider_policy="fallback")
    assert select_providers(fallback, cpu_only) == ["CPUExecutionProvider"]
    with pytest.raises(ModelLoadError, match="none of the requested"):
        select_providers(RuntimeConfig(providers=("cuda",), provider_policy="fallback"), cpu_only)


def test_onnxruntime_package_names_the_installed_distribution():
    from importlib import metadata

    from clipshield.service.runtime import onnxruntime_package

    assert f"onnxruntime {metadata.version('onnxruntime')}" in onnxruntime_package()


@pytest.fixture(scope="module")
def bundle(miniworld_model, tmp_path_factory):
    from clipshield.export import export_model

    return export_model(miniworld_model, tmp_path_factory.mktemp("providers") / "export")


@pytest.mark.skipif(not NO_CUDA, reason="checks CUDA requested where none exists; this onnxruntime has CUDA")
def test_cuda_requested_without_cuda_fail_policy(bundle):
    from clipshield.service.inference import ClipshieldService

    cfg = ServingConfig(runtime=RuntimeConfig(providers=("cuda", "cpu"), provider_policy="fail"))
    with pytest.raises(ModelLoadError, match=r"'cuda' \(CUDAExecutionProvider\) is not available.*installed: onnxruntime \d"):
        ClipshieldService.from_folder(bundle, cfg)


@pytest.mark.skipif(not NO_CUDA, reason="checks CUDA requested where none exists; this onnxruntime has CUDA")
def test_cuda_requested_without_cuda_fallback_policy(bundle, caplog):
    from clipshield.service.inference import ClipshieldService
    from clipshield.service.metrics import RecordingSink

    cfg = ServingConfig(runtime=RuntimeConfig(providers=("cuda", "cpu"), provider_policy="fallback"))
    sink = RecordingSink()
    with caplog.at_level(logging.WARNING, logger="clipshield.service.runtime"):
        service = ClipshieldService.from_folder(bundle, cfg, sink)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("CUDAExecutionProvider" in w and "falling back" in w for w in warnings), warnings
    assert service.image_encoder.provider == service.text_encoder.provider == "CPUExecutionProvider"
    described = service.describe()
    assert described["runtime"]["image_encoder_provider"] == "CPUExecutionProvider"
    assert described["runtime"]["requested_providers"] == ["cuda", "cpu"]
    info = [labels for (name, labels) in sink.gauges if name == "clipshield_runtime_info"]
    assert len(info) == 1 and dict(info[0])["provider"] == "CPUExecutionProvider"
    emb = service.image_encoder(np.zeros((2, 3, 32, 32), np.float32))
    assert emb.shape[0] == 2 and np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-4)


def test_gpu_overlay_and_image_select_cuda():
    """The GPU deployment asks for CUDA then CPU with policy fail; the CPU one keeps the image's cpu default."""
    import re
    from pathlib import Path

    import yaml

    from clipshield.service.settings import parse_policy

    repo = Path(__file__).resolve().parents[2]

    def env(overlay: str) -> dict[str, str]:
        docs = [d for d in yaml.safe_load_all((repo / "k8s" / "rendered" / f"{overlay}.yaml").read_text()) if d]
        pod = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]
        container = next(c for c in pod["containers"] if c["name"] == "torchserve")
        return {e["name"]: e.get("value") for e in container.get("env", [])}

    gpu = env("gpu")
    assert parse_providers(gpu["CLIPSHIELD_ORT_PROVIDERS"]) == ("cuda", "cpu")
    assert parse_policy(gpu["CLIPSHIELD_ORT_PROVIDER_POLICY"]) == "fail"
    assert "CLIPSHIELD_ORT_PROVIDERS" not in env("cpu")
    dockerfile = (repo / "Dockerfile").read_text()
    assert re.search(r"^ARG ORT_PROVIDERS=cpu$", dockerfile, flags=re.M)
    assert "CLIPSHIELD_ORT_PROVIDERS=${ORT_PROVIDERS}" in dockerfile and "--build-arg ORT_PROVIDERS=cuda,cpu" in dockerfile


@pytest.mark.skipif(not NO_CUDA, reason="needs an onnxruntime without CUDA to provoke ONNX Runtime's silent fallback")
@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider' is not in available provider names")
def test_silent_fallback_of_onnxruntime_is_caught(bundle, monkeypatch, caplog):
    """ONNX Runtime drops a provider it cannot initialise and runs on CPU without an error (as when the
    CUDA libraries are missing): pretend CUDA is listed, and check the provider actually running is checked."""
    from clipshield.service.bundle import IMAGE_ONNX
    from clipshield.service.runtime import image_encoder

    listed = ["CUDAExecutionProvider", *ort.get_available_providers()]
    monkeypatch.setattr(ort, "get_available_providers", lambda: listed)
    with pytest.raises(ModelLoadError, match=r"could not be initialised for image_encoder\.onnx, ONNX Runtime chose CPUExecutionProvider"):
        image_encoder(bundle / IMAGE_ONNX, RuntimeConfig(providers=("cuda", "cpu")))
    with caplog.at_level(logging.WARNING, logger="clipshield.service.runtime"):
        encoder = image_encoder(bundle / IMAGE_ONNX, RuntimeConfig(providers=("cuda", "cpu"), provider_policy="fallback"))
    assert encoder.provider == "CPUExecutionProvider"
    assert any("could not be initialised" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
