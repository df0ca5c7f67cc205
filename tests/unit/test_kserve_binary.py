"""The binary-data extension decoder (`handlers/kserve/binary.py`) on bodies tritonclient builds, no server.

Raw tensors must reach the adapter as the bytes sent (kserve's own decoder turns BYTES into UTF-8 text
and fails on image bytes), JSON inputs beside them stay as they were, and a body that does not add up
is the client's BadInput.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("kserve")
http = pytest.importorskip("tritonclient.http")

from clipshield.handlers.kserve.binary import request_from_bytes  # noqa: E402
from clipshield.handlers.kserve.model import raw_requests  # noqa: E402
from clipshield.service.errors import BadInput  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n\x00\xff not utf-8"
NO_SHAPE = json.dumps({"inputs": [{"name": "image"}]}).encode()


def _body(inputs, parameters=None) -> tuple[bytes, int]:
    body, json_size = http.InferenceServerClient.generate_request_body(inputs, parameters=parameters)
    return body, json_size


def _input(name, values, datatype="BYTES", binary=True):
    t = http.InferInput(name, [len(values)], datatype)
    t.set_data_from_numpy(np.array(values, dtype={"BYTES": object, "INT32": np.int32}[datatype]), binary_data=binary)
    return t


def test_raw_image_bytes_k_labels_and_json_inputs_arrive_as_sent():
    inputs = [
        _input("image", [PNG, b"second"]),
        _input("labels", ["cat", "dog"]),
        _input("top_k", [2], "INT32"),
        _input("purify", ["false"], binary=False),
    ]
    body, size = _body(inputs, parameters={"attack_score": True})
    request = request_from_bytes(body, size, "clipshield")
    first, second = raw_requests(request)
    assert first.parts == {"image": PNG, "labels": ["cat", "dog"], "top_k": 2, "purify": "false", "attack_score": True}
    assert second.parts["image"] == b"second"
    assert request.parameters == {"attack_score": True, "binary_data_output": True}


@pytest.mark.parametrize(
    "mangle,words",
    [
        (lambda body, size: (body[:-3], size), "runs past the end of the body"),  # raw data shorter than binary_data_size
        (lambda body, size: (body + b"xx", size), "add up"),  # bytes left over
        (lambda body, size: (body, len(body) + 1), "Inference-Header-Content-Length"),
        (lambda body, size: (b"{not json" + body[size:], 9), "not valid JSON"),
        (
            lambda body, size: (json.dumps({"inputs": [{"name": "image"}]}).encode(), len(json.dumps({"inputs": [{"name": "image"}]}))),
            "name, shape and datatype",
        ),
    ],
    ids=["short", "extra", "header-past-body", "header-not-json", "input-without-shape"],
)
def test_bodies_that_do_not_add_up_are_bad_input(mangle, words):
    body, size = _body([_input("image", [PNG])])
    with pytest.raises(BadInput, match=words):
        request_from_bytes(*mangle(body, size), "clipshield")


def test_raw_bytes_that_are_not_a_bytes_tensor_are_bad_input():
    header = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 3}}]}).encode()
    with pytest.raises(BadInput, match="do not hold a BYTES tensor"):
        request_from_bytes(header + b"\x09\x00\x00", len(header), "clipshield")
