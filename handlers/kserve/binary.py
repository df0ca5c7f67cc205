"""The Open Inference Protocol's binary-data extension over REST, decoded without losing bytes.

A REST request with the `Inference-Header-Content-Length` header is a JSON header followed by the raw
tensors of the inputs whose `parameters.binary_data_size` is set (tritonclient sends every input this
way by default). kserve 0.21's `InferRequest.from_bytes` turns each raw BYTES tensor back into JSON
text (`set_data_from_numpy(..., binary_data=False)`), which decodes every element as UTF-8: a PNG or
JPEG element fails there with kserve's `InferenceError`. `request_from_bytes` keeps the raw tensors as
they came, so an image arrives at the adapter as the bytes the client sent.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
from kserve import InferInput, InferRequest
from kserve.protocol.infer_type import RequestedOutput, deserialize_bytes_tensor
from kserve.utils.numpy_codec import to_np_dtype

from clipshield.service.errors import BadInput


def request_from_bytes(body: bytes, json_length: int, model_name: str) -> InferRequest:
    """An `InferRequest` from a binary-extension body: JSON header of `json_length` bytes, then raw tensors.

    Raises BadInput for a header that is not a v2 request or raw data that does not add up.
    """
    if not 0 < json_length <= len(body):
        raise BadInput(f"Inference-Header-Content-Length is {json_length}; the body has {len(body)} bytes")
    header = _header(body[:json_length])
    offset, inputs = json_length, []
    for spec in header["inputs"]:
        tensor, offset = _input(spec, body, offset)
        inputs.append(tensor)
    if offset != len(body):
        raise BadInput(
            f"the inputs' binary_data_size add up to {offset - json_length} bytes; {len(body) - json_length} bytes follow the header"
        )
    outputs = [RequestedOutput(name=o.get("name", ""), parameters=o.get("parameters")) for o in header.get("outputs") or []]
    return InferRequest(
        model_name=model_name,
        infer_inputs=inputs,
        request_id=header.get("id"),
        parameters=header.get("parameters"),
        request_outputs=outputs or None,
    )


def _header(text: bytes) -> dict[str, Any]:
    try:
        header = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadInput("the JSON header of a binary-data request is not valid JSON") from exc
    if not isinstance(header, dict) or not isinstance(header.get("inputs"), list):
        raise BadInput("not a valid v2 inference request: 'inputs' must be a list")
    return header


def _input(spec: Any, body: bytes, offset: int) -> tuple[InferInput, int]:
    """One input tensor and the offset after its raw data (JSON `data`, or `binary_data_size` raw bytes)."""
    if not isinstance(spec, dict) or not all(k in spec for k in ("name", "shape", "datatype")):
        raise BadInput("not a valid v2 inference request: every input needs name, shape and datatype")
    name, shape, datatype = spec["name"], spec["shape"], spec["datatype"]
    params = spec.get("parameters") or {}
    if "data" in spec:
        return InferInput(name=name, shape=shape, datatype=datatype, data=spec["data"], parameters=params or None), offset
    size = params.get("binary_data_size")
    if not isinstance(size, int) or size < 0:
        raise BadInput(f"input {name!r} has neither 'data' nor a binary_data_size")
    if offset + size > len(body):
        raise BadInput(f"input {name!r}: binary_data_size {size} runs past the end of the body")
    dtype = to_np_dtype(datatype)
    if dtype is None:
        raise BadInput(f"input {name!r} has an unknown datatype {datatype!r}")
    raw = body[offset : offset + size]
    try:
        array = deserialize_bytes_tensor(raw) if datatype == "BYTES" else np.frombuffer(raw, dtype=dtype)
        array = array.reshape(shape)
    except (ValueError, struct.error, TypeError) as exc:
        raise BadInput(f"input {name!r}: its {size} raw bytes do not hold a {datatype} tensor of shape {shape}") from exc
    kept = {k: v for k, v in params.items() if k != "binary_data_size"}
    tensor = InferInput(name=name, shape=list(array.shape), datatype=datatype, parameters=kept or None)
    tensor.set_data_from_numpy(array, binary_data=True)
    return tensor, offset + size
