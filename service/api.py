"""HTTP contract of the classifier, independent of the server: request parsing and response models.

A request is either a raw PNG/JPEG body (`Content-Type: image/png|image/jpeg`), or
`multipart/form-data` with an `image` file and optional `labels` (JSON list of strings),
`purify` and `attack_score` (`true`/`false`) and `top_k` fields. Servers hand the parts over as a dict; `parse_request`
turns it into image bytes plus a validated `PredictOptions`, raising `clipshield.service.errors` exceptions
(400 / 413 / 415) for the item alone.
"""

from __future__ import annotations

import json
import unicodedata
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, Optional

from pydantic import Field, ValidationError, field_validator

from clipshield.service.config import StrictModel
from clipshield.service.errors import BadInput, UnsupportedMediaType
from clipshield.service.preprocess import ACCEPTED_CONTENT_TYPES
from clipshield.service.settings import RequestLimits

RAW_KEYS = ("body", "data")
FORM_FIELDS = ("image", "labels", "purify", "top_k", "attack_score")


class PredictOptions(StrictModel):
    """Per-request options; None means "use the model's default"."""

    labels: Optional[tuple[str, ...]] = None
    purify: Optional[bool] = None
    top_k: Optional[int] = Field(default=None, ge=1)
    attack_score: Optional[bool] = None

    @field_validator("labels")
    @classmethod
    def _labels_not_blank(cls, v: Optional[tuple[str, ...]]) -> Optional[tuple[str, ...]]:
        problem = label_set_problem(v) if v is not None else None
        if problem:
            raise ValueError(problem)
        return v


def label_set_problem(labels: Sequence[str]) -> Optional[str]:
    """Our message for a label set that is empty, has a blank label or repeats one; None when fine."""
    if not labels:
        return "field 'labels' must hold at least one label"
    blank = [i for i, s in enumerate(labels) if not s.strip()]
    if blank:
        return f"labels must not be blank; got blank label(s) at position(s) {blank[:5]}"
    dupes = [s for s, n in Counter(labels).items() if n > 1]
    if dupes:
        shown = ", ".join(repr(s) for s in dupes[:5])
        return f"labels must be distinct; got duplicates: {shown}"
    return None


# pydantic error types -> our wording (a fallback: parse_request checks fields itself first).
_TYPE_MESSAGES = {
    "greater_than_equal": "must be at least {ge}",
    "bool_parsing": "must be true or false",
    "bool_type": "must be true or false",
    "int_parsing": "must be an integer",
    "int_type": "must be an integer",
    "int_from_float": "must be an integer",
    "tuple_type": "must be a JSON list of strings",
    "string_type": "must be a JSON list of strings",
}


def options_from(raw: Mapping[str, Any]) -> PredictOptions:
    """`PredictOptions` from parsed fields; a pydantic ValidationError becomes `BadInput` in our words."""
    try:
        return PredictOptions(**raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first.get("loc", ("request",))[0])
        ctx = first.get("ctx") or {}
        if first.get("type") == "extra_forbidden":
            raise BadInput(f"unknown field {field!r}; accepted: {list(FORM_FIELDS)}") from exc
        if first.get("type") == "value_error" and isinstance(ctx.get("error"), ValueError):
            raise BadInput(str(ctx["error"])) from exc
        wording = _TYPE_MESSAGES.get(str(first.get("type")), "has an invalid value")
        raise BadInput(f"field {field!r} {wording.format(**ctx)}") from exc


class Prediction(StrictModel):
    label: str
    score: float


class AttackScoreResult(StrictModel):
    """The calibrated attack score of one image (`clipshield.service.attack_score_np`): a logit, higher = more suspicious;
    `flagged` when above `threshold` (set at the model card's target false-positive rate on clean images)."""

    score: float
    threshold: float
    flagged: bool


class ModelInfo(StrictModel):
    name: str
    version: str


class PredictResponse(StrictModel):
    """Response body. `predictions` sorted by softmax score, highest first.

    `anchor_score`: cosine of the image embedding with the blank anchor (before purification).
    `prediction_shift`: total-variation distance between the class probabilities without and with
    purification (0 when not purified). `flipped`: purification changed the top-1 label. `flagged`:
    the decision of the model card's one detector, the calibrated attack score (a hint that the input
    may be adversarial, docs/security.md section 5): decided on every request when its signals are free
    (the anchor-only flag), else only when the score runs; false without a detector. `attack_score`: the
    detector's score when the request or the model default asked for it, else null.
    """

    predictions: list[Prediction]
    purified: bool
    anchor_score: float
    prediction_shift: float
    flipped: bool
    flagged: bool
    model: ModelInfo
    attack_score: Optional[AttackScoreResult] = None


class ErrorResponse(StrictModel):
    code: int
    type: str
    message: str


def _text(value: Any, name: str) -> str:
    if isinstance(value, (bytes, bytearray)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadInput(f"field {name!r} is not UTF-8 text") from exc
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value)
    except (TypeError, ValueError) as exc:
        raise BadInput(f"field {name!r} has an unsupported value type") from exc


def _parse_bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    text = _text(value, name).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise BadInput(f"field {name!r} must be true or false, not {text[:20]!r}")


def _parse_labels(value: Any, limits: RequestLimits) -> tuple[str, ...]:
    if isinstance(value, (list, tuple)):
        labels = value
    else:
        try:
            labels = json.loads(_text(value, "labels"))
        except json.JSONDecodeError as exc:
            raise BadInput("field 'labels' must be a JSON list of strings") from exc
    if not isinstance(labels, list) or not all(isinstance(s, str) for s in labels):
        raise BadInput("field 'labels' must be a JSON list of strings")
    if len(labels) > limits.max_labels:
        raise BadInput(f"{len(labels)} labels given; the limit is {limits.max_labels}")
    if any(len(s) > limits.max_label_chars for s in labels):
        raise BadInput(f"a label is longer than {limits.max_label_chars} characters")
    for s in labels:
        _check_label_text(s)
    problem = label_set_problem(labels)
    if problem:
        raise BadInput(problem)
    return tuple(labels)


def _check_label_text(label: str) -> None:
    """BadInput for text the tokenizer cannot take: lone surrogates (valid JSON escapes, invalid
    Unicode) and control characters."""
    try:
        label.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise BadInput("field 'labels' holds a string that is not valid Unicode (lone surrogate)") from exc
    if any(unicodedata.category(ch) == "Cc" for ch in label):
        raise BadInput("field 'labels' holds a control character")


def _parse_top_k(value: Any, limits: RequestLimits) -> int:
    text = _text(value, "top_k").strip() if not isinstance(value, int) else str(value)
    # ASCII digits only: str.isdigit() accepts superscripts and other scripts that int() rejects.
    if not (0 < len(text) <= 6 and text.isascii() and text.isdigit()) or not 1 <= int(text) <= limits.max_top_k:
        raise BadInput(f"field 'top_k' must be an integer in [1, {limits.max_top_k}]")
    return int(text)


def check_content_type(content_type: Optional[str]) -> None:
    """415 for an explicit content type that is neither an image nor multipart."""
    if not content_type:
        return
    base = content_type.split(";")[0].strip().lower()
    if base.startswith("multipart/form-data") or base in ACCEPTED_CONTENT_TYPES:
        return
    raise UnsupportedMediaType(f"content type {base!r} not accepted; send image/png, image/jpeg or multipart/form-data")


def parse_request(parts: Mapping[str, Any], content_type: Optional[str], limits: RequestLimits) -> tuple[bytes, PredictOptions]:
    """Image bytes and options from one request's parts (raw body, or multipart form fields)."""
    check_content_type(content_type)
    unknown = sorted(k for k in parts if k not in FORM_FIELDS and k not in RAW_KEYS)
    if unknown:
        raise BadInput(f"unknown form field(s) {unknown}; accepted: {list(FORM_FIELDS)}")
    image = parts.get("image")
    if image is None:
        image = next((parts[k] for k in RAW_KEYS if parts.get(k) is not None), None)
    if image is None:
        raise BadInput("no image: send a PNG/JPEG body or a multipart field 'image'")
    if not isinstance(image, (bytes, bytearray)):
        raise UnsupportedMediaType("image must be sent as binary PNG/JPEG data")
    raw: dict[str, Any] = {}
    if parts.get("labels") is not None:
        raw["labels"] = _parse_labels(parts["labels"], limits)
    for name in ("purify", "attack_score"):
        if parts.get(name) is not None:
            raw[name] = _parse_bool(parts[name], name)
    if parts.get("top_k") is not None:
        raw["top_k"] = _parse_top_k(parts["top_k"], limits)
    return bytes(image), options_from(raw)
