"""KServe (Open Inference Protocol v2) adapter over `clipshield.service.inference` (thin: every decision lives in `service/`).

The counterpart of `handlers/torchserve/handler.py` for the `kserve` Python model server: `load`
builds one `ClipshieldService` from a serving bundle (manifest verified); `predict` turns an OIP
request into one `RawRequest` per image and maps the results to named output tensors.

Request: input `image` BYTES `[N]` (or `[N, 1]`), one PNG/JPEG per element: raw bytes (the binary-data
extension, tritonclient's default, decoded by `handlers/kserve/binary.py`; gRPC) or base64 text (JSON);
text that is not base64 is refused with 415 like a text form field. Options are the TorchServe form
fields, as request parameters (`labels`: JSON-list text, as OIP parameters are scalars; `purify`, `top_k`,
`attack_score`) or named inputs of the same names: one element each, except `labels`, which is also a
BYTES tensor `[K]` of one label per element (K >= 2; one element is the JSON-list text, so `["cat"]` is
one label). `content_type` (request parameter) plays the Content-Type header. Every value goes through
`clipshield.service.api.parse_request`, so limits and messages are the TorchServe path's.

Response: `labels` BYTES `[N, K]`, `scores` FP32 `[N, K]`, `purified`/`flipped`/`flagged` BOOL `[N]`,
`anchor_score`/`prediction_shift` FP32 `[N]`, when the attack score was computed (asked for, or the model
default) `attack_score`/`attack_score_threshold` FP32 `[N]` and `attack_flagged` BOOL `[N]`, and per item `status` INT32 `[N]` (200 or the item's
4xx/5xx) with `error` BYTES `[N]` (the `ErrorResponse` JSON, "" when answered). A request whose every
item fails is answered in the protocol's error shape instead: the item's HTTP status and
`{"error": message, "code": status, "type": error type}`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from pathlib import Path
from typing import Any, Optional

import numpy as np
from kserve import InferOutput, InferRequest, InferResponse, Model

from clipshield.handlers.kserve.batcher import KServeBatchingConfig, MicroBatcher
from clipshield.service.api import ErrorResponse, PredictResponse
from clipshield.service.errors import BadInput, ClipshieldError, PayloadTooLarge
from clipshield.service.inference import ClipshieldService, RawRequest, Result, outcome_of
from clipshield.service.metrics import MetricsSink
from clipshield.service.settings import ServingConfig

log = logging.getLogger(__name__)

IMAGE_INPUT = "image"
LABELS_INPUT = "labels"
# Images per request: TorchServe never batches more than its batch size (8); without a bound here a
# 16 MiB body of tiny PNGs would be ~10^5 decodes and one multi-GB encoder batch.
MAX_IMAGES_PER_REQUEST = 64
CONTENT_TYPE_PARAM = "content_type"
# Parameters the protocol and its clients set themselves; never treated as request fields.
PROTOCOL_PARAMS = frozenset({"binary_data_output", "binary_data", "binary_data_size", "priority", "timeout", "headers"})
OUTPUTS: tuple[tuple[str, str], ...] = (
    ("labels", "BYTES"),
    ("scores", "FP32"),
    ("purified", "BOOL"),
    ("anchor_score", "FP32"),
    ("prediction_shift", "FP32"),
    ("flipped", "BOOL"),
    ("flagged", "BOOL"),
    ("status", "INT32"),
    ("error", "BYTES"),
)
# Present only when the request's answered items carry the attack score (`PredictResponse.attack_score`).
SCORE_OUTPUTS: tuple[tuple[str, str, str], ...] = (
    ("attack_score", "FP32", "score"),
    ("attack_score_threshold", "FP32", "threshold"),
    ("attack_flagged", "BOOL", "flagged"),
)


def _scalar(value: Any) -> Any:
    """Python value of a numpy element (bytes stay bytes: they are parsed as form-field text)."""
    return value.item() if isinstance(value, np.generic) else value


def _image_value(element: Any) -> Any:
    """Image bytes of one `image` element: base64 decoded; otherwise as sent (raw bytes from gRPC are the
    image; text that is not base64 is refused by `parse_request` with 415)."""
    value = _scalar(element)
    if isinstance(value, (str, bytes)):
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            return value
    return value


def _option_parts(request: InferRequest) -> tuple[dict[str, Any], Optional[str]]:
    """Form-field parts shared by every image of the request, and its content type."""
    params = {k: v for k, v in (request.parameters or {}).items() if k not in PROTOCOL_PARAMS}
    content_type = params.pop(CONTENT_TYPE_PARAM, None)
    if content_type is not None and not isinstance(content_type, str):
        raise BadInput(f"parameter {CONTENT_TYPE_PARAM!r} must be a string")
    parts: dict[str, Any] = dict(params)
    for tensor in request.inputs:
        if tensor.name == IMAGE_INPUT:
            continue
        values = tensor.as_numpy().reshape(-1)
        if tensor.name == LABELS_INPUT and values.size > 1:  # [K]: one label per element, as OIP clients send lists
            parts[tensor.name] = [_label(v) for v in values]
            continue
        if values.size != 1:
            raise BadInput(f"input {tensor.name!r} must hold exactly one element, not {values.size}")
        parts[tensor.name] = _scalar(values[0])
    return parts, content_type


def _label(element: Any) -> str:
    """One label of a `labels` tensor of shape [K] (UTF-8 bytes or text)."""
    value = _scalar(element)
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadInput("field 'labels' is not UTF-8 text") from exc
    if not isinstance(value, str):
        raise BadInput(f"input {LABELS_INPUT!r} must be BYTES (one label per element)")
    return value


def raw_requests(request: InferRequest) -> list[RawRequest]:
    """One `RawRequest` per element of the `image` input (none: one request without an image)."""
    parts, content_type = _option_parts(request)
    images = [t for t in request.inputs if t.name == IMAGE_INPUT]
    if not images:
        return [RawRequest(parts=parts, content_type=content_type)]
    if len(images) > 1:
        raise BadInput(f"one {IMAGE_INPUT!r} input per request (a BYTES tensor of shape [N] for N images)")
    if images[0].datatype != "BYTES":
        raise BadInput(f"input {IMAGE_INPUT!r} must be BYTES (encoded PNG/JPEG), not {images[0].datatype}")
    elements = images[0].as_numpy().reshape(-1)
    if elements.size == 0:
        raise BadInput(f"input {IMAGE_INPUT!r} holds no image")
    if elements.size > MAX_IMAGES_PER_REQUEST:
        raise PayloadTooLarge(f"{elements.size} images in one request; the limit is {MAX_IMAGES_PER_REQUEST}")
    return [RawRequest(parts={**parts, IMAGE_INPUT: _image_value(e)}, content_type=content_type) for e in elements]


def error_body(error: ClipshieldError) -> dict[str, Any]:
    """The protocol's error shape, with the TorchServe error body's code and type beside it."""
    code = error.http_status
    return {"error": str(error) if code < 500 else "internal error", "code": code, "type": type(error).__name__}


def _error_json(error: ClipshieldError) -> str:
    body = error_body(error)
    return ErrorResponse(code=body["code"], type=body["type"], message=body["error"]).model_dump_json()


def _tensor(name: str, datatype: str, values: list[Any]) -> InferOutput:
    dtype = {"BYTES": np.object_, "FP32": np.float32, "BOOL": np.bool_, "INT32": np.int32}[datatype]
    array = np.array(values, dtype=dtype)
    out = InferOutput(name=name, shape=list(array.shape), datatype=datatype)
    out.set_data_from_numpy(array, binary_data=False)
    return out


def to_outputs(results: list[Result]) -> list[InferOutput]:
    """Named output tensors for a batch of results; failed items are padded ("" / 0) and carry status."""
    answers = [r if isinstance(r, PredictResponse) else None for r in results]
    k = max((len(a.predictions) for a in answers if a is not None), default=0)
    rows: dict[str, list[Any]] = {name: [] for name, _ in OUTPUTS}
    for result, answer in zip(results, answers):
        error = None if isinstance(result, PredictResponse) else result
        preds = answer.predictions if answer is not None else []
        rows["labels"].append([p.label for p in preds] + [""] * (k - len(preds)))
        rows["scores"].append([p.score for p in preds] + [0.0] * (k - len(preds)))
        for name in ("purified", "anchor_score", "prediction_shift", "flipped", "flagged"):
            rows[name].append(getattr(answer, name) if answer is not None else 0)
        rows["status"].append(200 if error is None else error.http_status)
        rows["error"].append("" if error is None else _error_json(error))
    return [_tensor(name, dtype, rows[name]) for name, dtype in OUTPUTS] + _score_outputs(answers)


def _score_outputs(answers: list[Optional[PredictResponse]]) -> list[InferOutput]:
    """The attack-score tensors when any answer carries the score (options are per request, so all answered
    items do); failed items are padded with 0 / false like the other outputs."""
    if not any(a is not None and a.attack_score is not None for a in answers):
        return []
    scored = [a.attack_score if a is not None else None for a in answers]
    return [_tensor(name, dtype, [getattr(s, field) if s is not None else 0 for s in scored]) for name, dtype, field in SCORE_OUTPUTS]


class ClipshieldKServeModel(Model):
    """Zero-shot CLIP classification with optional CLIPure-Cos purification over the v2 protocol."""

    def __init__(
        self, name: str, bundle: Path, config: ServingConfig, metrics: MetricsSink, batching: Optional[KServeBatchingConfig] = None
    ) -> None:
        super().__init__(name)
        self.bundle = Path(bundle)
        self.config = config
        self.metrics = metrics
        self.service: Optional[ClipshieldService] = None
        batching = batching or KServeBatchingConfig()
        self.batcher = MicroBatcher(batching) if batching.enabled else None  # None: each request on its own

    def load(self) -> bool:
        """Load and verify the bundle (a changed file refuses to load: ModelLoadError)."""
        self.service = ClipshieldService.from_folder(self.bundle, self.config, self.metrics)
        self.ready = True
        return self.ready

    def replace(self, bundle: Path, config: ServingConfig) -> str:
        """Load `bundle` beside the served model, then switch to it in one assignment (requests in flight finish
        on the old service, the next ones get the new); returns the new model version. A bundle that does
        not load raises, and the old model keeps serving."""
        service = ClipshieldService.from_folder(bundle, config, self.metrics)
        self.service, self.bundle, self.config = service, Path(bundle), config
        log.info("model %s switched to %s (version %s)", self.name, bundle, service.info.version)
        return service.info.version

    @property
    def loaded(self) -> ClipshieldService:
        """The service `load` built; KServe routes requests to a model only once it is ready."""
        if self.service is None:
            raise RuntimeError(f"model {self.name} was asked to answer before load()")
        return self.service

    async def predict(self, payload: InferRequest, headers: Optional[dict[str, str]] = None) -> InferResponse:
        """Answer every image of the request; raises the item's error when no image was answered."""
        try:
            requests = raw_requests(payload)
        except ClipshieldError as exc:  # a malformed v2 request is counted like any refused request
            self.metrics.increment("clipshield_requests_total", labels={"outcome": outcome_of(exc)})
            raise
        service = self.loaded  # one service for the whole request, even when `replace` switches meanwhile
        if self.batcher is not None:  # queued with other requests' images, one predict call per flush
            results = await self.batcher.submit(service, requests)
        else:
            results = await asyncio.get_running_loop().run_in_executor(None, service.predict, requests)
        errors = [r for r in results if isinstance(r, ClipshieldError)]
        if len(errors) == len(results):  # no image answered: the request fails with the first item's error
            raise errors[0]
        info = service.info
        return InferResponse(
            response_id=payload.id or "",
            model_name=self.name,
            model_version=info.version,
            infer_outputs=to_outputs(results),
            parameters={"model": info.name, "model_version": info.version},
            use_binary_outputs=payload.use_binary_outputs,
            requested_outputs=payload.request_outputs,
        )

    def get_input_types(self) -> list[dict]:
        """Metadata of the inputs (options may also be request parameters)."""
        return [
            {"name": IMAGE_INPUT, "datatype": "BYTES", "shape": [-1]},
            {"name": LABELS_INPUT, "datatype": "BYTES", "shape": [-1]},
            {"name": "purify", "datatype": "BOOL", "shape": [1]},
            {"name": "top_k", "datatype": "INT32", "shape": [1]},
            {"name": "attack_score", "datatype": "BOOL", "shape": [1]},
        ]

    def get_output_types(self) -> list[dict]:
        """Metadata of the outputs (K = top_k, at most the label count; the attack-score ones only when computed)."""
        shapes = {"labels": [-1, -1], "scores": [-1, -1]}
        named = [*OUTPUTS, *((name, dtype) for name, dtype, _ in SCORE_OUTPUTS)]
        return [{"name": name, "datatype": dtype, "shape": shapes.get(name, [-1])} for name, dtype in named]

    def metadata(self) -> dict[str, Any]:
        """The v2 model metadata; `parameters` is `service.describe()` (the TorchServe describe answer:
        model card, bundle versions, execution providers, server version)."""
        return {
            "name": self.name,
            "versions": [self.loaded.card.version],
            "platform": "clipshield-onnxruntime",
            "inputs": self.get_input_types(),
            "outputs": self.get_output_types(),
            "parameters": self.loaded.describe(),
        }
