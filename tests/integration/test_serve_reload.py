"""`clipshield serve` on a model store whose TorchServe is already running answers from the new archive.

Issue 11: a second `serve` used to report success while the old archive kept answering. Now it
switches the running server to the new archive (test_torchserve_refresh.py), restarts it with
--if-running restart (needed when the providers change), refuses with --if-running fail, refuses ports held by
another server, and refuses an archive of a bundle format it cannot read before starting anything.
Tiny mini-world model, one worker: a few seconds per start.
"""

from __future__ import annotations

import json
import shutil

import pytest

from clipshield.service.bundle_info import FORMAT_VERSION, READABLE_FORMATS
from tests.integration.serving_helpers import free_port, image

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("java") is None, reason="TorchServe needs Java 17+ on PATH; java not found"),
]
requests = pytest.importorskip("requests")


@pytest.fixture(scope="module")
def bundles(miniworld_model, tmp_path_factory):
    """Export bundles of the mini-world model as versions A and B (exported once, archived per test)."""
    from clipshield.export import export_model

    root = tmp_path_factory.mktemp("reload")
    return {v: export_model(miniworld_model, root / f"export-{v}", version=v) for v in ("A", "B")}


def _archive(bundle, store):
    from clipshield.handlers.torchserve.archive import BatchingConfig, build_archive

    return build_archive(bundle, store, batching=BatchingConfig(min_workers=1, max_workers=1, max_batch_delay_ms=5))


def _serve_args(store, ports, *extra):
    return [
        "serve",
        "--model-store",
        str(store),
        "--address",
        f"http://127.0.0.1:{ports[0]}",
        "--management-address",
        f"http://127.0.0.1:{ports[1]}",
        "--metrics-address",
        f"http://127.0.0.1:{ports[2]}",
        "--grpc-ports",
        str(ports[3]),
        str(ports[4]),
        "--workers",
        "1",
        *extra,
    ]


def _answer(store, port):
    from clipshield.handlers.torchserve.launcher import STATE_DIR, read_keys

    key = read_keys(store / STATE_DIR)["inference"]
    r = requests.post(
        f"http://127.0.0.1:{port}/predictions/clipshield",
        data=image(seed=1),
        headers={"Content-Type": "image/png", "Authorization": f"Bearer {key}"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    return r.json()["model"]


def _check_runtime_reported(store, ports):
    """The workers got serve's provider settings: describe and the runtime-info gauge name the provider running."""
    import time

    from clipshield.handlers.torchserve.launcher import STATE_DIR, ServeConfig, ServerHandle, describe_model

    cfg = ServeConfig(management_address=f"http://127.0.0.1:{ports[1]}")
    runtime = describe_model(ServerHandle(None, cfg, store / STATE_DIR), "clipshield")["runtime"]
    assert runtime["requested_providers"] == ["cuda", "cpu"] and runtime["provider_policy"] == "fallback"
    assert runtime["image_encoder_provider"] == "CPUExecutionProvider"  # no CUDA on this host
    deadline, lines = time.monotonic() + 15, []
    while time.monotonic() < deadline and not lines:  # worker metrics reach the front end asynchronously
        text = requests.get(f"http://127.0.0.1:{ports[2]}/metrics", timeout=10).text
        lines = [ln for ln in text.splitlines() if ln.startswith("clipshield_runtime_info{")]
        time.sleep(0.2)
    assert lines and 'provider="CPUExecutionProvider"' in lines[0] and f'bundle_format="{FORMAT_VERSION}"' in lines[0], lines
    log = (store / STATE_DIR / "logs" / "model_log.log").read_text()
    assert "'cuda' (CUDAExecutionProvider) is not available" in log and "falling back" in log


def test_serve_again_serves_the_new_archive(bundles, tmp_path, capsys):
    from clipshield.cli.main import main
    from clipshield.handlers.torchserve.launcher import running_launcher, stop_server

    store = tmp_path / "model_store"
    ports = [free_port() for _ in range(5)]
    _archive(bundles["A"], store)
    try:
        assert main(_serve_args(store, ports)) == 0
        out = capsys.readouterr().out
        assert f"model:   miniworld-vit-tiny A (bundle format {FORMAT_VERSION}" in out and "on CPUExecutionProvider" in out
        assert _answer(store, ports[0])["version"] == "A"
        first = running_launcher(store)

        _archive(bundles["B"], store)  # B is also served with CUDA requested: this host has none, policy fallback
        with_cuda = ("--providers", "cuda,cpu", "--provider-policy", "fallback")
        assert main(_serve_args(store, ports, *with_cuda)) == 2  # the default refresh keeps the workers' providers
        assert "providers, provider_policy differ(s)" in capsys.readouterr().err and _answer(store, ports[0])["version"] == "A"
        assert main(_serve_args(store, ports, *with_cuda, "--if-running", "restart")) == 0
        out = capsys.readouterr().out
        assert f"launcher pid {first}) and restarted it" in out and "model:   miniworld-vit-tiny B" in out
        assert _answer(store, ports[0]) == {"name": "miniworld-vit-tiny", "version": "B"}
        assert running_launcher(store) not in (None, first)
        _check_runtime_reported(store, ports)

        assert main(_serve_args(store, ports, "--if-running", "fail")) == 2
        assert "already running" in capsys.readouterr().err
        assert _answer(store, ports[0])["version"] == "B"  # refusing left the server alone

        other = tmp_path / "other_store"  # another store on the same ports would be answered by this server
        _archive(bundles["A"], other)
        assert main(_serve_args(other, ports)) == 2
        assert "already in use by another process" in capsys.readouterr().err
        assert running_launcher(other) is None
    finally:
        stop_server(store)
    assert running_launcher(store) is None


def test_serve_refuses_unreadable_bundle_before_starting(bundles, tmp_path, capsys):
    import zipfile

    from clipshield.cli.main import main
    from clipshield.handlers.torchserve.launcher import running_launcher
    from clipshield.service.bundle_info import BUNDLE_INFO

    store = tmp_path / "model_store"
    mar = _archive(bundles["A"], store)
    future = mar.with_name("future.mar")
    with zipfile.ZipFile(mar) as src, zipfile.ZipFile(future, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename == BUNDLE_INFO:
                data = json.dumps({**json.loads(data), "format_version": 999}).encode()
            dst.writestr(item, data)
    assert main(_serve_args(store, [free_port() for _ in range(5)], "--name", "future")) == 2
    err = capsys.readouterr().err
    assert "bundle format 999" in err and f"reads formats {list(READABLE_FORMATS)}" in err
    assert running_launcher(store) is None
