"""Stock Open Inference Protocol clients against the KServe runtime, used as their documentation shows.

tritonclient's HTTP client sends every input through the binary-data extension unless told otherwise:
images as raw PNG bytes, a `labels` list as a BYTES tensor of shape [K]. Its gRPC client does the same
over gRPC v2 (run in its own process by `grpc_probe.py`: it cannot share one with kserve). Every answer
must equal what `ClipshieldService` gives in-process on the same bundle, and a bad input must be the
client's error (HTTP 400 / gRPC INVALID_ARGUMENT), never the server's. The server listens on loopback
only unless asked for all interfaces.
"""

from __future__ import annotations

import importlib.util
import json
import socket
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import requests

from . import serving_helpers as H

pytestmark = pytest.mark.integration
http = pytest.importorskip("tritonclient.http")
pytest.importorskip("kserve")
if importlib.util.find_spec("tritonclient.grpc") is None:
    pytest.skip("tritonclient[grpc] is not installed", allow_module_level=True)
from tritonclient.utils import InferenceServerException  # noqa: E402

MODEL = "clipshield"
GOOD = [H.image(seed=s) for s in (4, 5, 6)]
LABELS = ["a red circle", "a blue square", "a green star"]


@pytest.fixture(scope="module")
def bundle(miniworld_model, tmp_path_factory):
    from clipshield.export import export_model

    return export_model(miniworld_model, tmp_path_factory.mktemp("kserve_clients") / "export")


@pytest.fixture(scope="module")
def server(bundle):
    """One KServe server with REST and gRPC, started by the launcher on loopback (its default)."""
    from clipshield.handlers.kserve.launcher import KServeConfig, start_kserve, stop_kserve

    state = bundle.parent / "state"
    handle = start_kserve(bundle, state, KServeConfig(http_port=H.free_port(), grpc_port=H.free_port()))
    yield handle
    assert stop_kserve(state)


@pytest.fixture(scope="module")
def rest(server):
    c = http.InferenceServerClient(f"127.0.0.1:{server.config.http_port}", connection_timeout=H.TIMEOUT_S, network_timeout=H.TIMEOUT_S)
    yield c
    c.close()


@pytest.fixture(scope="module")
def local(bundle):
    """The in-process answer for one image and optional labels (what every client must get)."""
    from clipshield.service.inference import ClipshieldService, RawRequest

    service = ClipshieldService.from_folder(bundle)

    def predict(png: bytes, labels=None) -> dict:
        parts = {"image": png, **({"labels": json.dumps(labels)} if labels else {})}
        return service.predict([RawRequest(parts=parts, content_type="image/png")])[0].model_dump()

    return predict


def tensor(module, name: str, values: list, datatype: str = "BYTES", **kw):
    """An input as the client's documentation builds it (binary data unless `binary_data=False` is passed)."""
    t = module.InferInput(name, [len(values)], datatype)
    t.set_data_from_numpy(np.array(values, dtype={"BYTES": object, "INT32": np.int32}[datatype]), **kw)
    return t


def top(result, i: int = 0) -> list[tuple[str, float]]:
    labels = [s.decode() for s in result.as_numpy("labels")[i] if s]
    return list(zip(labels, (float(v) for v in result.as_numpy("scores")[i])))


def matches(got: list[tuple[str, float]], want: dict) -> bool:
    pairs = [(p["label"], p["score"]) for p in want["predictions"]]
    return [g[0] for g in got] == [w[0] for w in pairs] and all(abs(g[1] - w[1]) < 1e-4 for g, w in zip(got, pairs))


# --- tritonclient HTTP: binary BYTES and [K] labels ------------------------------------------------------------


def test_binary_bytes_images_as_tritonclient_sends_them(rest, local):
    """`set_data_from_numpy` with its default binary_data=True: raw PNG bytes after the JSON header."""
    result = rest.infer(MODEL, [tensor(http, "image", GOOD)])
    assert list(result.as_numpy("status")) == [200, 200, 200]
    assert all(matches(top(result, i), local(png)) for i, png in enumerate(GOOD))


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_labels_as_a_k_tensor(rest, local, binary):
    """`labels` BYTES [K], one label per element, beside a binary image; equal to the JSON-list form."""
    inputs = [tensor(http, "image", [GOOD[0]]), tensor(http, "labels", LABELS, binary_data=binary)]
    got = top(rest.infer(MODEL, inputs))
    assert {g[0] for g in got} == set(LABELS) and matches(got, local(GOOD[0], LABELS))


@pytest.mark.parametrize(
    "labels,words",
    [
        (["cat", "cat"], "distinct"),
        (["cat", "  "], "blank"),
        ([b"\xff\xfe", b"cat"], "UTF-8"),
        (["cat", "dog, mouse", "x" * 10_000], "longer"),
    ],
    ids=["duplicated", "blank", "not-utf8", "too-long"],
)
def test_bad_k_labels_are_the_clients_error(rest, labels, words):
    with pytest.raises(InferenceServerException) as err:
        rest.infer(MODEL, [tensor(http, "image", [GOOD[0]]), tensor(http, "labels", labels)])
    assert err.value.status() == "400" and words.lower() in err.value.message().lower(), err.value.message()


def test_binary_body_that_does_not_add_up_is_a_400(server):
    """A raw tensor shorter than its binary_data_size, or a header length past the body: 400, not 500."""
    header = json.dumps(
        {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 999}}]}
    ).encode()
    raw = struct.pack("<I", len(GOOD[0])) + GOOD[0]
    url = f"{server.url}/v2/models/{MODEL}/infer"
    for body, length in ((header + raw, len(header)), (header + raw, len(header) + len(raw) + 5)):
        r = requests.post(url, data=body, headers={"Inference-Header-Content-Length": str(length)}, timeout=H.TIMEOUT_S)
        assert r.status_code == 400 and r.json()["type"] == "BadInput", r.text


# --- tritonclient gRPC (in its own process: tests/integration/grpc_probe.py) -------------------------------------


@pytest.fixture(scope="module")
def grpc_report(server, tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("grpc_probe")
    paths = []
    for i, png in enumerate(GOOD[:2]):
        paths.append(folder / f"{i}.png")
        paths[-1].write_bytes(png)
    address = f"127.0.0.1:{server.config.grpc_port}"
    done = subprocess.run(
        [sys.executable, "-m", "tests.integration.grpc_probe", address, *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def test_grpc_health_and_metadata(grpc_report, bundle):
    from clipshield.service.bundle import read_card

    assert grpc_report["health"] == [True, True, True]
    assert grpc_report["unknown_model"][0] == "StatusCode.NOT_FOUND"
    meta = grpc_report["metadata"]
    assert meta["name"] == MODEL and meta["versions"] == [read_card(bundle).version]
    assert {t["name"] for t in meta["inputs"]} == {"image", "labels", "purify", "top_k", "attack_score"}
    assert {"labels", "scores", "status", "error"} <= {t["name"] for t in meta["outputs"]}


def test_grpc_infer_with_and_without_k_labels(grpc_report, local):
    for key, labels in (("with_labels", LABELS), ("without_labels", None)):
        answers = grpc_report[key]
        assert [a["status"] for a in answers] == [200, 200]
        assert all(matches([tuple(t) for t in a["top"]], local(png, labels)) for a, png in zip(answers, GOOD))


def test_grpc_bad_input_is_invalid_argument(grpc_report):
    words = {"not-an-image": "image", "duplicated-labels": "distinct", "top-k-zero": "top_k"}
    for name, (status, message) in grpc_report["bad"].items():
        assert status == "StatusCode.INVALID_ARGUMENT" and words[name] in message, (name, status, message)
    assert [a["status"] for a in grpc_report["after_bad"]] == [200]


# --- where it listens -----------------------------------------------------------------------------------------


def _outside_address() -> str:
    """This machine's address on its default route (not loopback); skip when it has none."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: nothing is sent, the kernel only picks a route
            address = s.getsockname()[0]
        except OSError:
            address = ""
    if not address or address.startswith("127."):
        pytest.skip("no non-loopback interface to probe from")
    return address


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def test_listens_on_loopback_only_by_default(server):
    outside = _outside_address()
    for port in (server.config.http_port, server.config.grpc_port):
        assert _accepts("127.0.0.1", port) and not _accepts(outside, port), port


def test_all_interfaces_only_when_asked():
    """`--address http://0.0.0.0:PORT` is the explicit ask: the server process gets --bind-host 0.0.0.0."""
    from clipshield.handlers.kserve.launcher import KServeConfig, KServeHandle, _command

    def bind(cfg: KServeConfig) -> str:
        argv = _command(Path("/b"), cfg)
        return argv[argv.index("--bind-host") + 1]

    assert bind(KServeConfig()) == "127.0.0.1" and bind(KServeConfig(host="0.0.0.0")) == "0.0.0.0"
    assert KServeHandle(None, KServeConfig(host="0.0.0.0", http_port=9), Path("/s")).url == "http://127.0.0.1:9"  # type: ignore[arg-type]


def test_server_counts_every_inference_response(server, rest):
    """SERVER_METRICS on /metrics: responses by status class (the 400s above included) and whole-request latency."""

    def value(prefix: str) -> float:
        text = requests.get(f"{server.url}/metrics", timeout=H.TIMEOUT_S).text
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))

    ok, bad = (value(f'clipshield_http_responses_total{{code_class="{c}"}}') for c in ("2xx", "4xx"))
    rest.infer(MODEL, [tensor(http, "image", [GOOD[0]])])
    with pytest.raises(InferenceServerException):
        rest.infer(MODEL, [tensor(http, "image", [b"not an image"])])
    assert value('clipshield_http_responses_total{code_class="2xx"}') == ok + 1
    assert value('clipshield_http_responses_total{code_class="4xx"}') == bad + 1
    assert value("clipshield_http_request_seconds_count") >= ok + bad + 2 and value("clipshield_http_request_seconds_sum") > 0
