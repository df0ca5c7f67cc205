"""TorchServe adapter over `clipshield.service.inference` (thin: every decision lives in `service/`).

`initialize` builds one `ClipshieldService` from the archive folder (`model_dir`, whose
`clipshield_manifest.json` is verified: a modified file refuses to load with a clear log line) and
its `serving.json`; `handle` turns TorchServe's per-request parts into `RawRequest`s, and maps each
result to one JSON response with its own status code (`set_response_status(code, phrase, idx)`),
so a bad item gets its own 4xx and never fails its batch mates. Metrics go to TorchServe's metrics
cache under the `clipshield_*` names declared in `model_store/metrics.yaml`.

A bundle the service refuses (unreadable format, checksum mismatch, missing execution provider)
fails `initialize` with one log line and a one-line error, without a chained traceback.
`GET /models/<name>?customized=true` (TorchServe's describe API) answers `service.describe()`:
model card, bundle versions, execution provider actually running, onnxruntime package.
"""

from __future__ import annotations

import json
import logging
import os
from http import HTTPStatus
from pathlib import Path
from typing import Any, Optional

from ts.torch_handler.base_handler import BaseHandler

from clipshield.handlers.torchserve.metrics import TorchServeSink
from clipshield.service.api import ErrorResponse
from clipshield.service.errors import ClipshieldError, ModelLoadError
from clipshield.service.inference import ClipshieldService, RawRequest
from clipshield.service.settings import load_serving_config

log = logging.getLogger(__name__)


def _content_type(context: Any, idx: int) -> Optional[str]:
    headers = context.get_all_request_header(idx) or {}
    for key, value in headers.items():
        if isinstance(key, str) and key.lower() == "content-type" and isinstance(value, str):
            return value
    body = headers.get("body")
    return body.get("content-type") if isinstance(body, dict) else None


def _is_describe(context: Any, idx: int) -> bool:
    """TorchServe's describe API (`GET /models/<name>?customized=true`) marks its request `describe: True`.

    Decided per item, never from the first request of a batch alone.
    """
    headers = context.get_all_request_header(idx) or {}
    return headers.get("describe") == "True"


def _reason(code: int) -> str:
    try:
        return HTTPStatus(code).phrase
    except ValueError:
        return "Error"


class ClipshieldHandler(BaseHandler):
    """Zero-shot CLIP classification with optional CLIPure-Cos purification, per-item status codes."""

    def initialize(self, context: Any) -> None:
        model_dir = Path(context.system_properties["model_dir"])
        try:
            config = load_serving_config(model_dir / "serving.json", os.environ)
            sink = TorchServeSink(context.metrics, context.model_name)
            self.service = ClipshieldService.from_folder(model_dir, config, sink)
        except ClipshieldError as exc:
            log.error("clipshield: model %s not loaded: %s", context.model_name, exc)
            raise ModelLoadError(f"model {context.model_name} not loaded: {exc}") from None
        self.initialized = True

    def handle(self, data: list[dict], context: Any) -> list[str]:
        describe = [_is_describe(context, i) for i in range(len(data))]
        predict = [i for i, d in enumerate(describe) if not d]
        requests = [RawRequest(parts=data[i] or {}, content_type=_content_type(context, i)) for i in predict]
        results: list[Any] = [None] * len(data)
        for i, result in zip(predict, self.service.predict(requests) if requests else []):
            results[i] = result
        out = []
        for idx in range(len(data)):
            context.set_response_content_type(idx, "application/json")
            if describe[idx]:
                out.append(json.dumps(self.service.describe()))
                continue
            result = results[idx]
            if isinstance(result, ClipshieldError):
                code = result.http_status
                message = str(result) if code < 500 else "internal error"
                # The reason phrase is the standard ASCII one, never the message: TorchServe 0.12 frames
                # the phrase by its length in characters but sends UTF-8 bytes, so a non-ASCII phrase
                # (a message quoting a bad field) corrupts the worker protocol and kills the worker.
                context.set_response_status(code, _reason(code), idx)
                out.append(ErrorResponse(code=code, type=type(result).__name__, message=message).model_dump_json())
            else:
                out.append(result.model_dump_json())
        return out
