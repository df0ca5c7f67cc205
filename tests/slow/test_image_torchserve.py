"""The TorchServe `serve` image, built and run by the repository (issue 25 part 1), beside test_images.py's serve-kserve.

`deploy/images/build.sh serve` builds the Dockerfile's default target with buildah (chroot, vfs) on the official
bases or their Debian stand-ins; torch is the Dockerfile's pin from download.pytorch.org's CPU index, or, where
that index cannot be reached, the local CPU wheel the script names in its log and report (a known difference).
`deploy/images/run.sh` runs it as k8s/base/deployment.yaml's `torchserve` container: its env, uid 1000, a
read-only root, the model store holding the mini-world `clipshield.mar` and the ConfigMap (config.properties
and metrics.yaml, listeners moved to free loopback ports) mounted read-only, `work` and `logs` writable (the
emptyDirs), tmpfs on /tmp. The server must answer raw and multipart requests and `ServingClient` exactly as
`ClipshieldService` does in-process, answer the whole bad-input matrix (`test_reliability.CASES`, each bad
request with three good batch mates, as test_reliability sends them), never restart its worker, leave no
process once stopped as the kubelet stops a pod (SIGTERM to the entrypoint, SIGKILL after STOP_GRACE_S: the
time and the way it stopped are printed), and refuse a tampered archive with the handler's one log line. Needs root and
buildah; minutes of CPU: run it under the shared lock (`make test-images`). CLIPSHIELD_IMAGES_REUSE=1 skips
the build when `localhost/clipshield/serve:dev` exists.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import requests
import yaml

from tests.integration import serving_helpers as H
from tests.integration.test_kserve import LABELS, same
from tests.integration.test_reliability import CASES, GOOD
from tests.layout import REPO
from tests.slow.image_build import built_image

pytestmark = [
    pytest.mark.slow,
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("buildah") is None or os.geteuid() != 0, reason="needs buildah and root (mount namespaces)"),
]

IMAGE = "localhost/clipshield/serve:dev"
RUN = REPO / "deploy" / "images" / "run.sh"
K8S = REPO / "k8s" / "base"
STORE = "/home/model-server/model-store"
WORKER = "model_service_worker"  # TorchServe's Python backend process (its argv names the module's file)
GRACE_S = 10  # run.sh's STOP_GRACE_S here (the Deployment's terminationGracePeriodSeconds is 60)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
    """The build script's report line for serve (or a stub for the existing image, CLIPSHIELD_IMAGES_REUSE=1)."""
    line = built_image("serve", IMAGE, tmp_path_factory.mktemp("images"))
    assert line.get("reused") or line["torch"]  # the report names the torch build the image carries
    return line


def _readable(folder: Path) -> Path:
    """The server runs as uid 1000: a mounted folder must be readable by others."""
    for f in [folder, *folder.rglob("*")]:
        f.chmod(0o755 if f.is_dir() else 0o644)
    return folder


@pytest.fixture(scope="module")
def bundle(miniworld_model, tmp_path_factory) -> Path:
    from clipshield.export import export_model

    return _readable(export_model(miniworld_model, tmp_path_factory.mktemp("ts-image-bundle") / "export"))


@pytest.fixture(scope="module")
def store(bundle, tmp_path_factory) -> Path:
    """A model store with the mini-world `clipshield.mar`: one worker, 100 ms batching (test_reliability's setting)."""
    from clipshield.handlers.torchserve.archive import BatchingConfig, build_archive

    folder = tmp_path_factory.mktemp("ts-image-store")
    build_archive(bundle, folder, batching=BatchingConfig(min_workers=1, max_workers=1, max_batch_delay_ms=100))
    return _readable(folder)


def _container() -> dict[str, Any]:
    deployment = yaml.safe_load((K8S / "deployment.yaml").read_text())
    (container,) = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "torchserve"]
    return container


class Server(SimpleNamespace):
    """A running image: run.sh's process, its listeners and its host-side `logs` volume."""

    proc: subprocess.Popen
    url: str
    management: str
    logs: Path
    console: Path


def _start(model_store: Path, root: Path) -> Server:
    """run.sh with the Deployment's env and volumes; config.properties from k8s/base with loopback listeners."""
    ports = [H.free_port() for _ in range(5)]
    listeners = {
        "inference_address": f"http://127.0.0.1:{ports[0]}",
        "management_address": f"http://127.0.0.1:{ports[1]}",
        "metrics_address": f"http://127.0.0.1:{ports[2]}",
    }
    lines = [
        f"{k}={listeners[k]}" if (k := ln.split("=", 1)[0]) in listeners else ln
        for ln in (K8S / "config.properties").read_text().splitlines()
    ]
    lines += ["grpc_inference_address=127.0.0.1", "grpc_management_address=127.0.0.1"]
    lines += [f"grpc_inference_port={ports[3]}", f"grpc_management_port={ports[4]}"]
    host = {"config": root / "config", "probes": K8S / "probes", "work": root / "work", "logs": root / "logs"}
    for name in ("config", "work", "logs"):
        host[name].mkdir(parents=True)
    (host["config"] / "config.properties").write_text("\n".join(lines) + "\n")
    shutil.copy(K8S / "metrics.yaml", host["config"] / "metrics.yaml")
    _readable(host["config"])
    for name in ("work", "logs"):
        os.chown(host[name], 1000, 1000)
    container, args = _container(), []
    for mount in container["volumeMounts"]:
        if mount["name"] in host:
            args += ["--bind", f"{host[mount['name']]}:{mount['mountPath']}" + (":ro" if mount.get("readOnly") else "")]
        else:
            assert mount["name"] in ("model-store", "tmp"), mount  # the positional model mount; run.sh's own /tmp tmpfs
    for env in container["env"]:
        args += ["--env", f"{env['name']}={env.get('value', '1')}"]  # valueFrom: the CPU limit, 1 core here
    console = root / "console.log"
    with console.open("w") as out:
        cmd = [str(RUN), *args, IMAGE, str(model_store), STORE]
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "STOP_GRACE_S": str(GRACE_S)})
    url, management = listeners["inference_address"] + "/predictions/clipshield", listeners["management_address"]
    return Server(proc=proc, url=url, management=management, logs=host["logs"], console=console)


def _workers(server: Server) -> list[dict[str, Any]]:
    r = requests.get(f"{server.management}/models/clipshield", timeout=10)
    return r.json()[0]["workers"] if r.status_code == 200 else []


def _processes(server: Server) -> list:
    import psutil  # type: ignore[import-untyped]

    return psutil.Process(server.proc.pid).children(recursive=True)


def _stop(server: Server) -> None:
    server.proc.terminate()
    try:
        server.proc.wait(60)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait(10)


@pytest.fixture(scope="module")
def server(built, store, tmp_path_factory):
    """The image serving the mini-world archive, once its worker is READY (the startup probe's condition)."""
    srv = _start(store, tmp_path_factory.mktemp("ts-image-run"))
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and srv.proc.poll() is None:
        try:
            if any(w["status"] == "READY" for w in _workers(srv)):
                break
        except requests.ConnectionError:
            pass
        time.sleep(1)
    else:
        _stop(srv)
        pytest.fail(f"image not ready (rc {srv.proc.returncode}): {srv.console.read_text()[-3000:]}")
    yield srv
    _stop(srv)


def _mount_options(pid: int, where: str) -> set[str]:
    found = [ln.split() for ln in Path(f"/proc/{pid}/mountinfo").read_text().splitlines() if ln.split()[4] == where]
    assert found, f"nothing mounted at {where}"
    return set(found[-1][5].split(","))


def test_runs_as_uid_1000_with_read_only_root_model_and_config(server, built):
    procs = {p.name(): p for p in _processes(server)}
    worker = [p for p in _processes(server) if any(WORKER in a for a in p.cmdline())]
    assert "java" in procs and worker, sorted(procs)
    for proc in (procs["java"], worker[0]):
        status = dict(ln.split(":", 1) for ln in Path(f"/proc/{proc.pid}/status").read_text().splitlines())
        assert status["Uid"].split()[:2] == ["1000", "1000"] and status["Gid"].split()[:2] == ["1000", "1000"]
        assert int(status["CapEff"], 16) == 0
    pid = worker[0].pid
    for ro in ("/", STORE, "/etc/clipshield", "/opt/clipshield/probes"):
        assert "ro" in _mount_options(pid, ro), ro
    for rw in ("/tmp", "/home/model-server/work", "/home/model-server/logs"):
        assert "rw" in _mount_options(pid, rw), rw
    # the torch the worker imports: a CPU build, the one the build report names when built in this run
    (torch,) = Path(f"/proc/{pid}/root/opt/venv/lib").glob("python3*/site-packages/torch-*.dist-info")
    version = torch.name.removeprefix("torch-").removesuffix(".dist-info")
    print(f"image torch {version}")
    assert "+cpu" in version or version == "2.14.1"
    assert built.get("reused") or built["torch"] == version


def test_answers_clients_as_the_service_does(server, bundle):
    from clipshield.handlers.client import ServingClient
    from clipshield.service.inference import ClipshieldService, RawRequest

    service = ClipshieldService.from_folder(bundle)
    r = requests.post(server.url, data=GOOD[0], headers={"Content-Type": "image/png"}, timeout=H.TIMEOUT_S)
    assert r.status_code == 200, r.text
    want = service.predict([RawRequest(parts={"image": GOOD[0]}, content_type="image/png")])[0]
    assert same(r.json(), want.model_dump())
    handle = SimpleNamespace(config=SimpleNamespace(inference_address=server.url.removesuffix("/predictions/clipshield")), keys=dict)
    status, body = ServingClient(handle).predict(GOOD[1], labels=LABELS, top_k=2)
    parts = {"image": GOOD[1], "labels": json.dumps(LABELS), "top_k": "2"}
    want = service.predict([RawRequest(parts=parts, content_type="image/png")])[0]
    assert status == 200 and len(body["predictions"]) == 2 and same(body, want.model_dump()), body
    status, body = ServingClient(handle).predict(b"GIF89a....")
    assert status == 415 and body["type"] == "UnsupportedMediaType"


@pytest.fixture(scope="module")
def reference(server) -> tuple[list[dict], set[int]]:
    """Each good image's answer alone, and the worker pids at the start."""
    answers = []
    for png in GOOD:
        r = requests.post(server.url, data=png, headers={"Content-Type": "image/png"}, timeout=H.TIMEOUT_S)
        assert r.status_code == 200, r.text
        answers.append(r.json())
    return answers, {w["pid"] for w in _workers(server)}


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_matrix(server, reference, case):
    _, kwargs, status, error_type, words = case
    answers, _ = reference

    def send(i: int) -> requests.Response:
        if i == 0:
            fresh: dict[str, Any] = {k: (dict(v) if isinstance(v, dict) else v) for k, v in kwargs.items()}
            return requests.post(server.url, timeout=H.TIMEOUT_S, **fresh)
        return requests.post(server.url, data=GOOD[i - 1], headers={"Content-Type": "image/png"}, timeout=H.TIMEOUT_S)

    with ThreadPoolExecutor(4) as pool:
        bad, *mates = list(pool.map(send, range(4)))
    assert bad.status_code == status, bad.text
    assert bad.headers["Content-Type"].startswith("application/json")
    body = bad.json()
    assert body["code"] == status and body["type"] == error_type and words.lower() in body["message"].lower(), body
    for r, want in zip(mates, answers):
        assert r.status_code == 200 and same(r.json(), want), r.text


def test_worker_never_restarted_and_stop_ends_every_process(server, reference):
    _, pids = reference
    assert {w["pid"] for w in _workers(server)} == pids
    procs = _processes(server)
    start = time.monotonic()
    _stop(server)
    killed = "ignored SIGTERM" in server.console.read_text()
    print(f"stopped in {time.monotonic() - start:.1f} s, {'by SIGKILL after the grace period' if killed else 'on SIGTERM'}")
    assert server.proc.returncode is not None and not [p for p in procs if p.is_running()], procs


def _tampered(store: Path, folder: Path) -> Path:
    """A copy of the store whose archive holds a modified text_head.npy (its manifest unchanged)."""
    folder.mkdir(parents=True)
    src, dst = zipfile.ZipFile(store / "clipshield.mar"), folder / "clipshield.mar"
    with src, zipfile.ZipFile(dst, "w") as out:
        for item in src.infolist():
            out.writestr(item, b"tampered" if item.filename == "text_head.npy" else src.read(item))
    return _readable(folder)


def test_refuses_a_tampered_archive(built, store, tmp_path):
    srv = _start(_tampered(store, tmp_path / "store"), tmp_path / "run")
    model_log = srv.logs / "model_log.log"
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and srv.proc.poll() is None:
            if model_log.is_file() and "clipshield: model clipshield not loaded:" in model_log.read_text():
                break
            time.sleep(1)
        text = model_log.read_text() if model_log.is_file() else srv.console.read_text()
        # the handler's line, once per load attempt (TorchServe retries the worker and logs its own traceback)
        refused = [ln for ln in text.splitlines() if "clipshield: model clipshield not loaded:" in ln]
        assert refused and all("sha256 mismatch for text_head.npy: the bundle was modified" in ln for ln in refused), text[-3000:]
        print(f"{len(refused)} refusal line(s); TorchServe's own traceback lines: {text.count('Traceback')}")
        if srv.proc.poll() is None:  # TorchServe keeps retrying the worker: the model never serves
            assert not any(w["status"] == "READY" for w in _workers(srv))  # the readiness probe's condition
            # a prediction is queued for a worker that never comes (TorchServe answers it only after its
            # default_response_timeout): no answer within 10 s, or an error
            try:
                r = requests.post(srv.url, data=GOOD[0], headers={"Content-Type": "image/png"}, timeout=10)
                print(f"prediction answered {r.status_code}")
                assert r.status_code >= 500, r.text
            except requests.ReadTimeout:
                print("prediction not answered within 10 s (queued)")
        print(f"server running after the refusal: {srv.proc.poll() is None} (rc {srv.proc.returncode})")
    finally:
        _stop(srv)
