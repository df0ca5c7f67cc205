"""The KServe runtime (Open Inference Protocol v2) against protocol clients nobody here wrote.

One server for the module on a bundle from the export code (`tests/integration/serving_helpers.py`'s
mini world). tritonclient (HTTP) and kserve's own `InferenceRESTClient` check liveness, readiness,
metadata (model card included) and inference with and without labels; every answer must equal what
`ClipshieldService` gives in-process on the same bundle (the adapter decides nothing). The whole
TorchServe bad-input matrix (`test_reliability.CASES`) is replayed in OIP form: same status, error
type and message words; bad images inside a batch get their own per-item status while their batch
mates are answered exactly as alone.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import pytest
import requests

from . import serving_helpers as H
from .test_reliability import CASES

pytestmark = pytest.mark.integration
http = pytest.importorskip("tritonclient.http")
pytest.importorskip("kserve")
from tritonclient.utils import InferenceServerException  # noqa: E402

MODEL = "clipshield"
GOOD = [H.image(seed=s) for s in (1, 2, 3)]
LABELS = ["a red circle", "a blue square", "a green star"]


# --- OIP requests from the TorchServe matrix's request kwargs ----------------------------------------------------


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def bytes_input(name: str, values: list[Any]) -> Any:
    """A BYTES input; binary extension only for bytes that are not UTF-8 (JSON cannot carry them)."""
    binary = any(isinstance(v, bytes) and not _utf8(v) for v in values)
    tensor = http.InferInput(name, [len(values)], "BYTES")
    tensor.set_data_from_numpy(np.array(values, dtype=object), binary_data=binary)
    return tensor


def _utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def oip_case(kwargs: dict) -> tuple[Optional[list[Any]], list[Any], dict[str, Any]]:
    """(image elements or None, option inputs, request parameters) equivalent to a TorchServe request.

    Raw body -> one base64 image element, its Content-Type -> the `content_type` parameter; multipart
    image part -> base64 element (a text part stays text, as TorchServe hands text parts over as str);
    other form fields -> one-element BYTES inputs of the same name holding the same bytes.
    """
    if "data" in kwargs:
        ctype = kwargs.get("headers", {}).get("Content-Type")
        return [b64(kwargs["data"])], [], ({"content_type": ctype} if ctype else {})
    images, options = None, []
    for name, value in kwargs["files"].items():
        if name == "image":
            _, data, ctype = value
            images = [b64(data) if ctype.startswith("image/") else data.decode("utf-8")]
        else:
            options.append(bytes_input(name, [value[1]]))
    return images, options, {}


def infer(client, images: Optional[list[Any]], options: Sequence[Any] = (), parameters: Optional[dict] = None):
    inputs = ([bytes_input("image", images)] if images is not None else []) + list(options)
    return client.infer(MODEL, inputs, parameters=parameters or None)


def raw_error(server, images, options, parameters) -> requests.Response:
    """The same request as JSON over plain HTTP, to read the whole error body (curl's view)."""
    inputs = ([bytes_input("image", images)] if images is not None else []) + list(options)
    body, json_size = http.InferenceServerClient.generate_request_body(inputs, parameters=parameters or None)
    headers = {"Inference-Header-Content-Length": str(json_size)} if json_size is not None else {"Content-Type": "application/json"}
    return requests.post(f"{server.url}/v2/models/{MODEL}/infer", data=body, headers=headers, timeout=H.TIMEOUT_S)


def answer(result, i: int = 0) -> dict[str, Any]:
    """Item `i` of an InferResult in the TorchServe response's terms."""
    labels = [s.decode() for s in result.as_numpy("labels")[i] if s]
    scores = result.as_numpy("scores")[i][: len(labels)]
    out: dict[str, Any] = {"predictions": [{"label": lab, "score": float(s)} for lab, s in zip(labels, scores)]}
    for name in ("purified", "flipped", "flagged"):
        out[name] = bool(result.as_numpy(name)[i])
    for name in ("anchor_score", "prediction_shift"):
        out[name] = float(result.as_numpy(name)[i])
    return out


def same(got: dict, want: dict) -> bool:
    labels = [p["label"] for p in got["predictions"]] == [p["label"] for p in want["predictions"]]
    scores = all(abs(a["score"] - b["score"]) < 1e-4 for a, b in zip(got["predictions"], want["predictions"]))
    flags = all(got[k] == want[k] for k in ("purified", "flipped", "flagged"))
    return labels and scores and flags and abs(got["anchor_score"] - want["anchor_score"]) < 1e-4


# --- fixtures --------------------------------------------------------------------------------------------------


def anchor_detector(anchor_below: float):
    """The one-signal detector (issue 24) flagging `anchor_score < anchor_below`, as a format-1 flag converts to."""
    from clipshield.service.card import LegacyFlagCalibration, score_from_legacy_flag

    return score_from_legacy_flag(LegacyFlagCalibration(anchor_below=anchor_below, target_fpr=0.05, dataset="test", n_calibration=1))


@pytest.fixture(scope="module")
def bundle(miniworld_model, tmp_path_factory):
    from clipshield.export import export_model

    return export_model(miniworld_model, tmp_path_factory.mktemp("kserve") / "export")


@dataclass(frozen=True)
class Server:
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


@pytest.fixture(scope="module")
def server(bundle):
    """Started and stopped through the CLI: `clipshield serve --runtime kserve [--stop | --ping]`."""
    from clipshield.cli.main import main

    store, port = bundle.parent / "model_store", H.free_port()
    common = ["serve", "--runtime", "kserve", "--model-store", str(store), "--address", f"http://127.0.0.1:{port}"]
    assert main([*common, "--bundle", str(bundle)]) == 0
    yield Server("127.0.0.1", port)
    assert main([*common, "--stop"]) == 0
    assert main([*common, "--ping"]) == 1


@pytest.fixture(scope="module")
def client(server):
    c = http.InferenceServerClient(
        f"{server.host}:{server.port}", concurrency=4, connection_timeout=H.TIMEOUT_S, network_timeout=H.TIMEOUT_S
    )
    yield c
    c.close()


@pytest.fixture(scope="module")
def local(bundle):
    """The same bundle in-process: what the adapter must answer."""
    from clipshield.service.inference import ClipshieldService, RawRequest

    service = ClipshieldService.from_folder(bundle)
    return lambda parts: service.predict([RawRequest(parts=parts, content_type="image/png")])[0].model_dump()


@pytest.fixture(scope="module")
def reference(client, local):
    answers = [answer(infer(client, [b64(png)])) for png in GOOD]
    for png, got in zip(GOOD, answers):
        assert same(got, local({"image": png}))
    return answers


# --- health, metadata, inference -------------------------------------------------------------------------------


def test_cli_ping(server):
    from clipshield.cli.main import main

    assert main(["serve", "--runtime", "kserve", "--ping", "--address", server.url]) == 0
    assert main(["serve", "--runtime", "kserve", "--ping", "--address", f"http://127.0.0.1:{H.free_port()}"]) == 1


def test_health_and_metadata_with_tritonclient(client, bundle):
    from clipshield.service.bundle import read_card

    card = read_card(bundle)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(MODEL)
    assert not client.is_model_ready("no-such-model")
    meta = client.get_model_metadata(MODEL)
    assert meta["name"] == MODEL and meta["versions"] == [card.version]
    described = meta["parameters"]  # service.describe(), as TorchServe's describe API answers it
    assert described["model"] == card.model_dump(mode="json", exclude_none=True) and described["bundle"]["format_version"] >= 1
    assert described["runtime"]["image_encoder_provider"]
    assert {t["name"] for t in meta["inputs"]} == {"image", "labels", "purify", "top_k", "attack_score"}
    assert {"labels", "scores", "flagged", "flipped", "status", "error"} <= {t["name"] for t in meta["outputs"]}
    with pytest.raises(InferenceServerException) as err:
        client.get_model_metadata("no-such-model")
    assert err.value.status() == "404"


def test_batch_without_labels_matches_the_service(client, local):
    result = infer(client, [b64(png) for png in GOOD])
    assert list(result.as_numpy("status")) == [200, 200, 200]
    assert result.get_response()["model_version"] == "1.0"
    for i, png in enumerate(GOOD):
        got, want = answer(result, i), local({"image": png})
        assert len(got["predictions"]) == 5 and same(got, want), (got, want)


@pytest.fixture(scope="module")
def anchor_served(miniworld_model, bundle, tmp_path_factory):
    """A second server on the exported mini world with an anchor-only detector whose threshold is the median anchor
    score of GOOD, and the same bundle in-process; yields (client, local service, anchor_below)."""
    from clipshield.cli.main import main
    from clipshield.export import export_model
    from clipshield.export.exporter import ExportMeasurements
    from clipshield.service.inference import ClipshieldService, RawRequest

    root = tmp_path_factory.mktemp("kserve-anchor")
    plain = ClipshieldService.from_folder(bundle).predict([RawRequest({"body": png}, "image/png") for png in GOOD])
    median = float(np.median([r.anchor_score for r in plain]))
    folder = export_model(miniworld_model, root / "export", measured=ExportMeasurements(attack_score=anchor_detector(median)))
    port = H.free_port()
    common = ["serve", "--runtime", "kserve", "--model-store", str(root / "model_store"), "--address", f"http://127.0.0.1:{port}"]
    assert main([*common, "--bundle", str(folder)]) == 0
    c = http.InferenceServerClient(f"127.0.0.1:{port}", connection_timeout=H.TIMEOUT_S, network_timeout=H.TIMEOUT_S)
    yield c, ClipshieldService.from_folder(folder), median
    c.close()
    assert main([*common, "--stop"]) == 0


def test_flagged_is_the_one_detector_on_every_request(anchor_served):
    """`flagged` (OIP BOOL output) is the card's anchor-only detector, decided without asking for the score."""
    from clipshield.service.inference import RawRequest

    client, service, anchor_below = anchor_served
    result = infer(client, [b64(png) for png in GOOD])
    got = [answer(result, i) for i in range(len(GOOD))]
    want = service.predict([RawRequest({"body": png}, "image/png") for png in GOOD])
    assert [g["flagged"] for g in got] == [w.flagged for w in want]
    assert [g["flagged"] for g in got] == [g["anchor_score"] < anchor_below for g in got] and sum(g["flagged"] for g in got) == 1
    assert "attack_flagged" not in {o["name"] for o in result.get_response()["outputs"]}  # the score itself: only when asked


@pytest.mark.parametrize("how", ["parameters", "named-inputs"])
def test_labels_purify_top_k(client, local, how):
    if how == "parameters":
        result = infer(client, [b64(GOOD[0])], parameters={"labels": json.dumps(LABELS), "purify": False, "top_k": 2})
    else:
        options = [
            bytes_input("labels", [json.dumps(LABELS)]),
            http.InferInput("purify", [1], "BOOL"),
            http.InferInput("top_k", [1], "INT32"),
        ]
        options[1].set_data_from_numpy(np.array([False]), binary_data=False)
        options[2].set_data_from_numpy(np.array([2], dtype=np.int32), binary_data=False)
        result = infer(client, [b64(GOOD[0])], options)
    got = answer(result)
    want = local({"image": GOOD[0], "labels": json.dumps(LABELS), "purify": "false", "top_k": "2"})
    assert {p["label"] for p in got["predictions"]} <= set(LABELS)
    assert len(got["predictions"]) == 2 and not got["purified"] and got["prediction_shift"] == 0.0
    assert same(got, want)


def test_kserve_rest_client(server, local):
    """kserve's own v2 REST client: health and an inference with custom labels."""
    from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig

    async def run():
        c = InferenceRESTClient(RESTConfig(protocol="v2", retries=0, timeout=H.TIMEOUT_S))
        try:
            live = await c.is_server_live(server.url)
            ready = await c.is_model_ready(server.url, MODEL)
            image = InferInput("image", [1], "BYTES")
            image.set_data_from_numpy(np.array([b64(GOOD[1])], dtype=object), binary_data=False)
            req = InferRequest(model_name=MODEL, infer_inputs=[image], parameters={"labels": json.dumps(LABELS), "top_k": 3})
            return live, ready, await c.infer(server.url, req, MODEL)
        finally:
            await c.close()

    live, ready, res = asyncio.run(run())
    assert live and ready
    outputs = {o.name: o.as_numpy() for o in res.outputs}
    want = local({"image": GOOD[1], "labels": json.dumps(LABELS), "top_k": "3"})
    got = [s.decode() if isinstance(s, bytes) else s for s in outputs["labels"][0]]
    assert got == [p["label"] for p in want["predictions"]]
    assert np.allclose(outputs["scores"][0], [p["score"] for p in want["predictions"]], atol=1e-4)
    assert bool(outputs["flagged"][0]) == want["flagged"] and int(outputs["status"][0]) == 200


# --- the bad-input matrix --------------------------------------------------------------------------------------


def _check_error_body(r: requests.Response, status: int, error_type: str, words: str) -> None:
    assert r.status_code == status, r.text
    assert r.headers["Content-Type"].startswith("application/json")
    body = r.json()
    assert body["code"] == status and body["type"] == error_type, body
    assert words.lower() in body["error"].lower(), body


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_matrix(server, client, reference, case):
    _, kwargs, status, error_type, words = case
    images, options, params = oip_case(kwargs)

    good = [client.async_infer(MODEL, [bytes_input("image", [b64(png)])]) for png in GOOD]  # in flight meanwhile
    with pytest.raises(InferenceServerException) as err:
        infer(client, images, options, params)
    bad = err.value
    mates = [answer(request.get_result()) for request in good]
    assert bad.status() == str(status) and words.lower() in bad.message().lower(), (bad.status(), bad.message())
    assert all(same(got, want) for got, want in zip(mates, reference))
    _check_error_body(raw_error(server, images, options, params), status, error_type, words)
    assert same(answer(infer(client, [b64(GOOD[0])])), reference[0])


IMAGE_CASES = [c for c in CASES if "data" in c[1] and c[1]["headers"].get("Content-Type") in (None, "image/png", "image/jpeg")]


@pytest.mark.parametrize("case", IMAGE_CASES, ids=[c[0] for c in IMAGE_CASES])
def test_bad_image_inside_a_batch(client, reference, case):
    """A bad image among good ones: its own status and error in the outputs; the others answered as alone."""
    _, kwargs, status, error_type, words = case
    images, _, params = oip_case(kwargs)
    result = infer(client, [images[0]] + [b64(png) for png in GOOD], parameters=params)
    assert list(result.as_numpy("status")) == [status, 200, 200, 200]
    error = json.loads(result.as_numpy("error")[0])
    assert error["code"] == status and error["type"] == error_type and words.lower() in error["message"].lower()
    assert answer(result, 0)["predictions"] == []
    assert all(same(answer(result, i + 1), want) for i, want in enumerate(reference))


@pytest.mark.parametrize(
    "name,data",
    [
        ("1x1", H.image(size=(1, 1))),
        ("cmyk-jpeg", H.image("CMYK", fmt="JPEG")),
        ("16-bit-png", H.image("I;16")),
        ("rgba-png", H.image("RGBA")),
        ("palette-png", H.image("P")),
        ("1-bit-png", H.image("1")),
    ],
)
def test_unusual_but_valid_images_are_answered(client, name, data):
    result = infer(client, [b64(data)])
    assert list(result.as_numpy("status")) == [200] and len(answer(result)["predictions"]) == 5


def test_parameters_must_be_scalars(server):
    """OIP parameters are bool/number/string: a JSON list is refused in the protocol's error shape."""
    body = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [b64(GOOD[0])]}], "parameters": {"labels": LABELS}}
    r = requests.post(f"{server.url}/v2/models/{MODEL}/infer", json=body, timeout=H.TIMEOUT_S)
    _check_error_body(r, 400, "BadInput", "valid v2 inference request")


def test_body_over_the_limit_is_refused_before_parsing(server, client):
    r = requests.post(
        f"{server.url}/v2/models/{MODEL}/infer",
        data=b"{" + bytes(17 * 1024 * 1024),
        headers={"Content-Type": "application/json"},
        timeout=H.TIMEOUT_S,
    )
    _check_error_body(r, 413, "PayloadTooLarge", "limit")
    assert list(infer(client, [b64(GOOD[0])]).as_numpy("status")) == [200]


def test_binary_image_tensor_is_answered(client, reference):
    """A binary-extension image (tritonclient's default) is the image's bytes, answered as its base64 form."""
    tensor = http.InferInput("image", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([GOOD[0]], dtype=object), binary_data=True)
    assert same(answer(client.infer(MODEL, [tensor])), reference[0])


def test_metrics_on_the_prometheus_endpoint(server, client):
    """Runs after the matrix: the `clipshield_` metrics of service/metrics.py, by outcome."""
    infer(client, [b64(GOOD[0])])
    text = requests.get(f"{server.url}/metrics", timeout=H.TIMEOUT_S).text

    def total(prefix: str, contains: str = "") -> float:
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix) and contains in line)

    assert total("clipshield_requests_total{", 'outcome="ok"') >= 1
    assert total("clipshield_requests_total{", 'outcome="bad_input"') >= 10
    assert total("clipshield_requests_total{", 'outcome="too_large"') >= 2
    assert total("clipshield_requests_total{", 'outcome="unsupported_media"') >= 5
    assert total("clipshield_decode_seconds_count") >= 1 and total("clipshield_encode_seconds_count") >= 1


def test_load_test_translation_meets_the_torchserve_contract(server, local):
    """tests/load/oip.py (used by locust and the runtime benchmark): a plain-JSON v2 round trip judged
    by the load test's TorchServe contract, and equal to the in-process answer."""
    from tests.load.contract import Expectation, check_response
    from tests.load.oip import INFER_PATH, as_torchserve, infer_body

    fields = {"labels": json.dumps(LABELS), "purify": "true", "top_k": "2"}
    r = requests.post(server.url + INFER_PATH.format(name=MODEL), json=infer_body(GOOD[2], fields), timeout=H.TIMEOUT_S)
    got = as_torchserve(r.json())
    assert check_response(r.status_code, json.dumps(got), Expectation(labels=tuple(LABELS), purify=True, top_k=2)) is None
    want = local({"image": GOOD[2], **fields})
    assert same(got, want) and got["model"] == want["model"]


def test_malformed_v2_requests_are_refused_and_counted(server, client):
    """Protocol-level mistakes (two image inputs, a non-BYTES image, a multi-element option) are
    400s in the protocol's error shape, and counted in clipshield_requests_total like any refusal."""

    def bad_outcomes() -> float:
        text = requests.get(f"{server.url}/metrics", timeout=H.TIMEOUT_S).text
        return sum(
            float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines() if ln.startswith('clipshield_requests_total{outcome="bad_input"}')
        )

    before = bad_outcomes()
    fp32 = http.InferInput("image", [1], "FP32")
    fp32.set_data_from_numpy(np.array([1.0], dtype=np.float32), binary_data=False)
    top_k = http.InferInput("top_k", [2], "INT32")
    top_k.set_data_from_numpy(np.array([1, 2], dtype=np.int32), binary_data=False)
    cases = [
        ([bytes_input("image", [b64(GOOD[0])]), bytes_input("image", [b64(GOOD[1])])], "one 'image' input"),
        ([fp32], "must be BYTES"),
        ([bytes_input("image", [b64(GOOD[0])]), top_k], "exactly one element"),
    ]
    tiny = b64(H.image(size=(1, 1)))
    with pytest.raises(InferenceServerException) as err:  # a bounded batch: 65 images of 1x1 pixel
        client.infer(MODEL, [bytes_input("image", [tiny] * 65)])
    assert err.value.status() == "413" and "the limit is 64" in err.value.message()
    assert list(infer(client, [tiny] * 64).as_numpy("status")) == [200] * 64
    for inputs, words in cases:
        with pytest.raises(InferenceServerException) as err:
            client.infer(MODEL, inputs)
        assert err.value.status() == "400" and words in err.value.message(), err.value.message()
    assert bad_outcomes() - before == len(cases)


def test_a_changed_bundle_is_refused_with_one_log_line(bundle, tmp_path):
    """The manifest check of `service/` refuses a modified bundle: the server exits, the start fails."""
    import shutil

    from clipshield.handlers.kserve.launcher import KServeConfig, KServeError, start_kserve

    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    (copy / "labels.json").write_text((copy / "labels.json").read_text().replace("circle", "circles", 1))
    with pytest.raises(KServeError, match="exited with status 1"):
        start_kserve(copy, tmp_path / "state", KServeConfig(http_port=H.free_port()))
    log = (tmp_path / "state" / "server.log").read_text()
    assert "not loaded" in log and "sha256 mismatch for labels.json" in log and "Traceback" not in log
