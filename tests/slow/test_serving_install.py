"""The serving installs run the serving commands (issue 24): the built wheel goes into fresh venvs outside the
checkout, one with `.[serve-kserve]` (no torch at all) and one with `.[serve-torchserve]` (TorchServe's worker
needs torch, not torchvision or open_clip). In each, `clipshield archive`, `release`, `serve` (its runtime),
`serve --ping` and `serve --stop` run from a working directory outside the checkout, and the started server
answers a request for the shipped sample image. The bundle comes from the full install (`clipshield export`).

Slow (pip installs, minutes): `make test-serving-install`. pip uses its configured indexes; to keep the
TorchServe venv's torch small, set CLIPSHIELD_TORCH_REQUIREMENT to a CPU torch (a wheel file or a requirement),
installed first.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.integration.serving_helpers import free_port
from tests.layout import PACKAGES, REPO

pytestmark = [pytest.mark.slow, pytest.mark.integration]

SAMPLE = REPO / "docs" / "assets" / "green-star.png"  # a mini-world render of a green star
LABELS = ["green star", "red star", "green circle", "blue square"]
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")


def _run(cmd: list[str], cwd: Path, check: bool = True, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    if check:
        assert out.returncode == 0, f"{' '.join(cmd)}:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"
    return out


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md", *PACKAGES):
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=IGNORED)
        else:
            shutil.copy2(REPO / name, src / name)
    out = tmp_path_factory.mktemp("wheel")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", str(out), str(src)], out)
    (built,) = out.glob("clipshield-*.whl")
    return built


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped model exported by the full install, as a user would."""
    work = tmp_path_factory.mktemp("export")
    _run([sys.executable, "-m", "clipshield.cli.main", "export", "--model", "miniworld", "--out", str(work / "bundle")], work)
    return work / "bundle"


def make_venv(root: Path, wheel: Path, extra: str, first: tuple[str, ...] = ()) -> Path:
    """A fresh venv under `root` with `clipshield[extra]` from the wheel; returns its bin folder."""
    _run([sys.executable, "-m", "venv", str(root / "venv")], root)
    pip = [str(root / "venv" / "bin" / "python"), "-m", "pip", "install", "-q"]
    if first:
        _run([*pip, *first], root)
    _run([*pip, f"{wheel}[{extra}]"], root)
    return root / "venv" / "bin"


def imports(bin_dir: Path, module: str, cwd: Path) -> bool:
    return _run([str(bin_dir / "python"), "-c", f"import {module}"], cwd, check=False).returncode == 0


def archive_and_release(bin_dir: Path, bundle: Path, cwd: Path) -> Path:
    store = cwd / "model_store"
    _run([str(bin_dir / "clipshield"), "archive", "--export", str(bundle), "--model-store", str(store)], cwd)
    assert (store / "clipshield.mar").is_file()
    candidate = Path(shutil.copytree(bundle, cwd / "candidate"))  # a release writes its decision into the candidate's card
    release = [str(bin_dir / "clipshield"), "release", str(candidate), "--baseline", str(bundle)]
    refused = _run(release, cwd, check=False)  # the shipped model's card holds no accuracy to compare
    assert refused.returncode == 3 and "nothing comparable" in refused.stdout, refused.stdout + refused.stderr
    assert "released with --force" in _run([*release, "--force", "--reason", "serving-install test"], cwd).stdout
    return store


def oip_request(port: int) -> dict:
    body = {
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(SAMPLE.read_bytes()).decode()]}],
        "parameters": {"labels": json.dumps(LABELS), "top_k": 1},
    }
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v2/models/clipshield/infer", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read())


def multipart(parts: dict[str, bytes]) -> tuple[bytes, str]:
    """A multipart/form-data body (what curl -F sends) and its content type."""
    boundary = "clipshield-boundary"
    body = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode() + value + b"\r\n" for name, value in parts.items()
    )
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def test_kserve_install_serves_archives_and_releases_without_torch(wheel, bundle, tmp_path):
    bin_dir = make_venv(tmp_path, wheel, "serve-kserve")
    assert not any(imports(bin_dir, m, tmp_path) for m in ("torch", "torchvision", "open_clip"))
    store = archive_and_release(bin_dir, bundle, tmp_path)
    port = free_port()
    serve = [
        str(bin_dir / "clipshield"),
        "serve",
        "--runtime",
        "kserve",
        "--model-store",
        str(store),
        "--address",
        f"http://127.0.0.1:{port}",
    ]
    _run([*serve, "--bundle", str(bundle)], tmp_path)
    try:
        assert _run([*serve, "--ping"], tmp_path, check=False).returncode == 0
        labels = next(o for o in oip_request(port)["outputs"] if o["name"] == "labels")
        assert labels["data"] == ["green star"]
    finally:
        _run([*serve, "--stop"], tmp_path)
    assert _run([*serve, "--ping"], tmp_path, check=False).returncode == 1


def test_torchserve_install_serves_archives_and_releases(wheel, bundle, tmp_path):
    if shutil.which("java") is None:
        pytest.skip("TorchServe needs Java 17")
    torch = os.environ.get("CLIPSHIELD_TORCH_REQUIREMENT")
    bin_dir = make_venv(tmp_path, wheel, "serve-torchserve", (torch,) if torch else ())
    assert imports(bin_dir, "torch", tmp_path) and not imports(bin_dir, "torchvision", tmp_path)
    store = archive_and_release(bin_dir, bundle, tmp_path)  # no config.properties in it: the packaged one is used
    ports = [free_port() for _ in range(5)]
    addresses = ["--address", f"http://127.0.0.1:{ports[0]}", "--management-address", f"http://127.0.0.1:{ports[1]}"]
    addresses += ["--metrics-address", f"http://127.0.0.1:{ports[2]}", "--grpc-ports", str(ports[3]), str(ports[4])]
    serve = [str(bin_dir / "clipshield"), "serve", "--model-store", str(store), *addresses]
    _run([*serve, "--workers", "1"], tmp_path)
    try:
        assert _run([*serve, "--ping"], tmp_path, check=False).returncode == 0
        key = json.loads((store / ".server" / "key_file.json").read_text())["inference"]["key"]
        body, content_type = multipart({"image": SAMPLE.read_bytes(), "labels": json.dumps(LABELS).encode()})
        headers = {"Content-Type": content_type, "Authorization": f"Bearer {key}"}
        req = urllib.request.Request(f"http://127.0.0.1:{ports[0]}/predictions/clipshield", body, headers)
        with urllib.request.urlopen(req, timeout=60) as resp:
            assert json.loads(resp.read())["predictions"][0]["label"] == "green star"
    finally:
        _run([*serve, "--stop"], tmp_path)
