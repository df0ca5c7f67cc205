"""Open Inference Protocol (KServe v2) form of the load test's requests and answers.

`infer_body(image, fields)` is the JSON request the KServe runtime takes for one image and the
multipart form fields a TorchServe request would carry (image base64, fields as request parameters);
`as_torchserve(body)` turns a v2 response back into the TorchServe JSON answer, so one contract
(`tests.load.contract.check_response`) judges both runtimes. Free of locust imports.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

INFER_PATH = "/v2/models/{name}/infer"
ITEM_FIELDS = ("purified", "anchor_score", "prediction_shift", "flipped", "flagged")


def infer_body(image: bytes, fields: Mapping[str, str] | None = None) -> dict[str, Any]:
    """v2 request for one image; `fields` are the multipart form fields (labels JSON text, purify, top_k)."""
    body: dict[str, Any] = {
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(image).decode("ascii")]}],
    }
    if fields:
        body["parameters"] = dict(fields)
    return body


def _rows(output: Mapping[str, Any]) -> list[Any]:
    shape, data = output["shape"], output["data"]
    if len(shape) == 2:
        return [data[i * shape[1] : (i + 1) * shape[1]] for i in range(shape[0])]
    return list(data)


def as_torchserve(body: Mapping[str, Any], item: int = 0) -> dict[str, Any]:
    """The TorchServe answer (docs/serving.md section 3) held by item `item` of a v2 JSON response."""
    outputs = {o["name"]: _rows(o) for o in body["outputs"]}
    labels, scores = outputs["labels"][item], outputs["scores"][item]
    answer: dict[str, Any] = {
        "predictions": [{"label": lab, "score": float(s)} for lab, s in zip(labels, scores) if lab],
    }
    for name in ITEM_FIELDS:
        answer[name] = outputs[name][item]
    answer["attack_score"] = None
    if "attack_score" in outputs:  # present only when the score was computed
        answer["attack_score"] = {
            "score": float(outputs["attack_score"][item]),
            "threshold": float(outputs["attack_score_threshold"][item]),
            "flagged": bool(outputs["attack_flagged"][item]),
        }
    params = body.get("parameters") or {}
    answer["model"] = {"name": params.get("model"), "version": params.get("model_version")}
    return answer
