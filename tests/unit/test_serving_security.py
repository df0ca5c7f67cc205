"""Safe defaults of the serving path (issue 7): rendered TorchServe config, no unpickling of files."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from clipshield.handlers.torchserve.launcher import PACKAGED_CONFIG, ServeConfig, render_properties
from tests.layout import PACKAGES

REPO = Path(__file__).resolve().parents[2]


def _props(cfg: ServeConfig, tmp_path: Path) -> dict[str, str]:
    text = render_properties(PACKAGED_CONFIG, tmp_path, cfg)
    pairs = (line.split("=", 1) for line in text.splitlines() if "=" in line and not line.lstrip().startswith("#"))
    return {k.strip(): v.strip() for k, v in pairs}


@pytest.mark.parametrize("inference", ["http://127.0.0.1:8080", "http://0.0.0.0:8080"])
def test_rendered_config_keeps_admin_listeners_on_loopback(tmp_path, inference):
    props = _props(ServeConfig(inference_address=inference), tmp_path)
    assert props["inference_address"] == inference
    for key in ("management_address", "metrics_address"):
        assert props[key].startswith("http://127.0.0.1:"), (key, props[key])
    assert props["grpc_inference_address"] == props["grpc_management_address"] == "127.0.0.1"


def test_rendered_config_security_and_capacity_settings(tmp_path):
    props = _props(ServeConfig(), tmp_path)
    assert props["disable_token_authorization"] == "false"  # token auth on for management and inference
    # Registration on for `clipshield serve`'s refresh (handlers/torchserve/refresh.py): the management API is on
    # loopback with its own token, and allowed_urls below admits local files only.
    assert props["enable_model_api"] == "true"
    allowed = re.compile(props["allowed_urls"])
    assert allowed.fullmatch("file:///models/clipshield.mar")
    for url in ("https://example.com/evil.mar", "http://169.254.169.254/latest", "s3://bucket/x.mar"):
        assert not allowed.fullmatch(url), url
    assert int(props["job_queue_size"]) == ServeConfig().job_queue_size == 100  # bounded queue: 503, not latency
    assert int(props["default_workers_per_model"]) == 2
    assert int(props["max_request_size"]) >= 8 * 1024 * 1024 and props["install_py_dep_per_model"] == "false"


def test_token_auth_off_only_when_asked(tmp_path):
    assert _props(ServeConfig(token_auth=False), tmp_path)["disable_token_authorization"] == "true"


def _calls(tree: ast.AST, dotted: str):
    mod, name = dotted.rsplit(".", 1)
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == name
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == mod
        ):
            yield node


def _kw(call: ast.Call, key: str):
    for kw in call.keywords:
        if kw.arg == key and isinstance(kw.value, ast.Constant):
            return kw.value.value
    return None


def test_no_code_path_unpickles_files():
    """Checkpoints are safetensors; torch.load only with weights_only=True; np.load never allows
    pickles; pickle itself is not used by the library, the serving core or the handler."""
    files = [p for d in PACKAGES for p in (REPO / d).rglob("*.py")]
    assert files
    for path in files:
        tree = ast.parse(path.read_text(), str(path))
        for call in _calls(tree, "torch.load"):
            assert _kw(call, "weights_only") is True, f"{path}:{call.lineno} torch.load without weights_only=True"
        for call in _calls(tree, "np.load"):
            assert _kw(call, "allow_pickle") is not True, f"{path}:{call.lineno} np.load(allow_pickle=True)"
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
                assert not {"pickle", "dill", "cloudpickle", "joblib"} & set(names), f"{path}:{node.lineno} imports a pickler"


def test_served_npy_files_refuse_pickles(miniworld_model, tmp_path):
    """A bundle whose .npy holds a pickled object (correct sha256 in a rewritten manifest) is refused."""
    import numpy as np

    from clipshield.export import export_model
    from clipshield.service import bundle as B
    from clipshield.service.inference import ClipshieldService

    folder = export_model(miniworld_model, tmp_path / "export")
    np.save(folder / B.ANCHOR, np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    B.write_manifest(folder)
    from clipshield.service.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match="pickled objects are refused"):
        ClipshieldService.from_folder(folder)
