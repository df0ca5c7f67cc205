"""The KServe adapter's request/response mapping without a server (tests/integration/test_kserve.py runs one).

Every option reaches `clipshield.service.api.parse_request` unchanged (parameters and one-element named inputs
alike), base64 images are decoded and anything else is left for the service to refuse, and a batch's
outputs carry one row per item with failed items padded and marked by their own status.
"""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

pytest.importorskip("kserve")
from kserve import InferInput, InferRequest

from clipshield.handlers.kserve.model import MAX_IMAGES_PER_REQUEST, error_body, raw_requests, to_outputs
from clipshield.service.api import ModelInfo, Prediction, PredictResponse
from clipshield.service.errors import BadInput, ClipshieldError, PayloadTooLarge, UnsupportedMediaType


def _bytes(name: str, values: list) -> InferInput:
    tensor = InferInput(name, [len(values)], "BYTES")
    tensor.set_data_from_numpy(np.array(values, dtype=object), binary_data=False)
    return tensor


def _request(inputs: list, parameters: dict | None = None) -> InferRequest:
    return InferRequest(model_name="clipshield", infer_inputs=inputs, parameters=parameters)


def test_images_and_options_reach_the_service_as_form_fields():
    png = b"\x89PNG\r\n\x1a\nfake"
    top_k = InferInput("top_k", [1], "INT32")
    top_k.set_data_from_numpy(np.array([3], dtype=np.int32), binary_data=False)
    req = _request(
        [_bytes("image", [base64.b64encode(png).decode(), "not base64!"]), _bytes("labels", ['["cat", "dog"]']), top_k],
        parameters={"purify": False, "content_type": "image/png", "binary_data_output": True},
    )
    first, second = raw_requests(req)
    assert first.parts == {"image": png, "labels": '["cat", "dog"]', "top_k": 3, "purify": False}
    assert second.parts["image"] == "not base64!"  # text: parse_request refuses it with 415
    assert first.content_type == second.content_type == "image/png"


def test_unknown_parameters_are_left_for_the_service_to_refuse():
    (only,) = raw_requests(_request([_bytes("colour", ["red"])], parameters={"shape": "star"}))
    assert only.parts == {"colour": "red", "shape": "star"} and "image" not in only.parts


@pytest.mark.parametrize(
    "inputs,error,words",
    [
        (lambda: [_bytes("image", ["a"]), _bytes("image", ["b"])], BadInput, "one 'image' input"),
        (lambda: [_bytes("image", [])], BadInput, "no image"),
        (lambda: [_bytes("image", ["a"] * (MAX_IMAGES_PER_REQUEST + 1))], PayloadTooLarge, "limit"),
        (lambda: [_bytes("image", ["a"]), _bytes("purify", ["true", "false"])], BadInput, "exactly one element"),
    ],
)
def test_malformed_requests(inputs, error, words):
    with pytest.raises(error, match=words):
        raw_requests(_request(inputs()))


def test_labels_tensor_of_k_elements_is_one_label_each():
    """BYTES [K] (K >= 2), text or UTF-8 bytes: a list of K labels; a non-UTF-8 label is refused."""
    labels = InferInput("labels", [3], "BYTES")
    labels.set_data_from_numpy(np.array([b"cat", "dog", "a \xe9clair".encode()], dtype=object), binary_data=True)
    (only,) = raw_requests(_request([_bytes("image", ["a"]), labels]))
    assert only.parts["labels"] == ["cat", "dog", "a \xe9clair"]
    bad = InferInput("labels", [2], "BYTES")
    bad.set_data_from_numpy(np.array([b"cat", b"\xff"], dtype=object), binary_data=True)
    with pytest.raises(BadInput, match="UTF-8"):
        raw_requests(_request([_bytes("image", ["a"]), bad]))


def test_outputs_one_row_per_item_failed_items_padded():
    ok = PredictResponse(
        predictions=[Prediction(label="cat", score=0.9), Prediction(label="dog", score=0.1)],
        purified=True,
        anchor_score=0.3,
        prediction_shift=0.1,
        flipped=False,
        flagged=True,
        model=ModelInfo(name="m", version="1"),
    )
    outputs = {o.name: o for o in to_outputs([ok, UnsupportedMediaType("image format not accepted")])}
    assert outputs["labels"].shape == [2, 2] and outputs["labels"].data == ["cat", "dog", "", ""]
    assert outputs["scores"].data == pytest.approx([0.9, 0.1, 0.0, 0.0])
    assert outputs["status"].data == [200, 415] and outputs["flagged"].data == [True, False]
    assert outputs["error"].data[0] == ""
    assert json.loads(outputs["error"].data[1]) == {"code": 415, "type": "UnsupportedMediaType", "message": "image format not accepted"}


def test_internal_errors_do_not_leak_their_message():
    assert error_body(ClipshieldError("secret path /srv/x")) == {"error": "internal error", "code": 500, "type": "ClipshieldError"}
    assert error_body(BadInput("field 'top_k' ...")) == {"error": "field 'top_k' ...", "code": 400, "type": "BadInput"}
