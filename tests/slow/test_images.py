"""The serving images, built and run by the repository (issue 25 part 1): `make images`, then the image as a cluster runs it.

`deploy/images/build.sh serve-kserve` builds the lean KServe image with buildah (chroot isolation, vfs
storage) on the official Python base or, where it cannot be pulled, on a stand-in bootstrapped from
Debian packages. `deploy/images/run.sh` then runs it as uid 1000 with a read-only root filesystem and
the mini-world bundle mounted read-only. The server must answer tritonclient (binary BYTES image, `[K]`
labels) exactly as `ClipshieldService` does in-process, answer the whole bad-input matrix
(`test_reliability.CASES`, in OIP form as `test_kserve` sends it) with the same statuses and message
words, and refuse a tampered bundle. Needs root (mount namespaces), buildah and mmdebstrap or the
official bases; minutes of CPU: run it under the shared lock. CLIPSHIELD_IMAGES_REUSE=1 skips the
build when `localhost/clipshield/serve-kserve:dev` already exists (it was built by the same script).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from tests.integration import serving_helpers as H
from tests.layout import REPO
from tests.slow.image_build import built_image

pytestmark = [
    pytest.mark.slow,
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("buildah") is None or os.geteuid() != 0, reason="needs buildah and root (mount namespaces)"),
]
http = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

from tests.integration.test_kserve import GOOD, LABELS, MODEL, answer, b64, infer, oip_case, same  # noqa: E402
from tests.integration.test_reliability import CASES  # noqa: E402

IMAGE = "localhost/clipshield/serve-kserve:dev"
RUN = REPO / "deploy" / "images" / "run.sh"


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
    """The build script's report line for serve-kserve (or a stub for the existing image, CLIPSHIELD_IMAGES_REUSE=1)."""
    line = built_image("serve-kserve", IMAGE, tmp_path_factory.mktemp("images"))
    return line


@pytest.fixture(scope="module")
def bundle(miniworld_model, tmp_path_factory) -> Path:
    from clipshield.export import export_model

    folder = export_model(miniworld_model, tmp_path_factory.mktemp("image-bundle") / "export")
    folder.chmod(0o755)  # the server runs as uid 1000: the bundle must be readable by others
    for f in folder.rglob("*"):
        f.chmod(0o755 if f.is_dir() else 0o644)
    return folder


def _start(bundle: Path, port: int, log: Path) -> subprocess.Popen:
    args = ["--bundle", "/mnt/models", "--model-name", MODEL, "--host-port", str(port), "--bind-host", "127.0.0.1"]
    with log.open("w") as out:
        return subprocess.Popen([str(RUN), IMAGE, str(bundle), "/mnt/models", *args], stdout=out, stderr=subprocess.STDOUT)


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


@pytest.fixture(scope="module")
def server(built, bundle, tmp_path_factory):
    """(client, server pid as seen from here, url) of the image running on the bundle."""
    import psutil  # type: ignore[import-untyped]

    port, log = H.free_port(), tmp_path_factory.mktemp("image-run") / "server.log"
    proc = _start(bundle, port, log)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if requests.get(f"{url}/v2/models/{MODEL}/ready", timeout=2).status_code == 200:
                break
        except requests.ConnectionError:
            pass
        time.sleep(1)
    else:
        _stop(proc)
        pytest.fail(f"image did not become ready (rc {proc.returncode}): {log.read_text()[-3000:]}")
    entry = ["-m", "clipshield.handlers.kserve.app"]  # the server itself, not the launcher whose script names it
    pids = [p for p in psutil.Process(proc.pid).children(recursive=True) if p.cmdline()[1:3] == entry]
    client = http.InferenceServerClient(f"127.0.0.1:{port}", connection_timeout=H.TIMEOUT_S, network_timeout=H.TIMEOUT_S)
    yield client, pids[0].pid, url
    client.close()
    _stop(proc)
    assert proc.returncode is not None


def _mount_options(pid: int, where: str) -> set[str]:
    """Per-mount options of the last mount at `where` in the process's own mount table."""
    found = [ln.split() for ln in Path(f"/proc/{pid}/mountinfo").read_text().splitlines() if ln.split()[4] == where]
    assert found, f"nothing mounted at {where}"
    return set(found[-1][5].split(","))


def test_runs_as_uid_1000_with_read_only_root_and_model(server):
    _, pid, _ = server
    status = dict(ln.split(":", 1) for ln in Path(f"/proc/{pid}/status").read_text().splitlines())
    assert status["Uid"].split()[:2] == ["1000", "1000"] and status["Gid"].split()[:2] == ["1000", "1000"]
    assert int(status["CapEff"], 16) == 0
    assert "ro" in _mount_options(pid, "/") and "ro" in _mount_options(pid, "/mnt/models")
    assert "rw" in _mount_options(pid, "/tmp")


def test_answers_tritonclient_as_the_service_does(server, bundle):
    """tritonclient's defaults: binary BYTES image, labels as a [K] BYTES tensor, one label per element."""
    from clipshield.service.inference import ClipshieldService, RawRequest

    client, _, _ = server
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(MODEL)
    assert client.get_model_metadata(MODEL)["name"] == MODEL
    image = http.InferInput("image", [1], "BYTES")
    image.set_data_from_numpy(np.array([GOOD[1]], dtype=object))  # binary_data=True is the default
    labels = http.InferInput("labels", [len(LABELS)], "BYTES")
    labels.set_data_from_numpy(np.array([s.encode() for s in LABELS], dtype=object))
    got = answer(client.infer(MODEL, [image, labels]))
    service = ClipshieldService.from_folder(bundle)
    want = service.predict([RawRequest(parts={"image": GOOD[1], "labels": json.dumps(LABELS)}, content_type="image/png")])[0]
    assert {p["label"] for p in got["predictions"]} <= set(LABELS) and same(got, want.model_dump())
    plain = answer(infer(client, [b64(GOOD[0])]))
    assert same(plain, service.predict([RawRequest(parts={"image": GOOD[0]}, content_type="image/png")])[0].model_dump())


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_matrix(server, case):
    client, _, _ = server
    _, kwargs, status, _, words = case
    images, options, params = oip_case(kwargs)
    with pytest.raises(InferenceServerException) as err:
        infer(client, images, options, params)
    assert err.value.status() == str(status) and words.lower() in err.value.message().lower(), (err.value.status(), err.value.message())


def test_refuses_a_tampered_bundle(built, bundle, tmp_path):
    tampered = tmp_path / "tampered"
    shutil.copytree(bundle, tampered)
    tampered.chmod(0o755)
    (tampered / "text_head.npy").write_bytes(b"tampered")
    log = tmp_path / "server.log"
    proc = _start(tampered, H.free_port(), log)
    try:
        rc = proc.wait(120)
    finally:
        if proc.poll() is None:
            _stop(proc)
    text = log.read_text()
    assert rc == 1 and "sha256 mismatch for text_head.npy" in text and "Traceback" not in text, text[-3000:]
