"""Request parsing of the HTTP contract (raw body and multipart fields)."""

from __future__ import annotations

import pytest

from clipshield.service.api import PredictOptions, PredictResponse, parse_request
from clipshield.service.errors import BadInput, UnsupportedMediaType
from clipshield.service.settings import RequestLimits

LIMITS = RequestLimits()
PNG = b"\x89PNG\r\n\x1a\n rest"


def test_raw_body():
    image, opts = parse_request({"body": bytearray(PNG)}, "image/png", LIMITS)
    assert image == PNG and opts == PredictOptions()


def test_multipart_fields_bytes_and_text():
    parts = {"image": PNG, "labels": b'["cat", "dog"]', "purify": "false", "top_k": b"1"}
    image, opts = parse_request(parts, "multipart/form-data; boundary=abc", LIMITS)
    assert image == PNG
    assert opts.labels == ("cat", "dog") and opts.purify is False and opts.top_k == 1
    _, opts = parse_request({"image": PNG, "labels": ["a", "b"], "purify": b"TRUE"}, None, LIMITS)
    assert opts.labels == ("a", "b") and opts.purify is True


@pytest.mark.parametrize(
    "parts, match",
    [
        ({}, "no image"),
        ({"image": PNG, "labels": b"cat"}, "JSON list"),
        ({"image": PNG, "labels": b"[1, 2]"}, "JSON list"),
        ({"image": PNG, "labels": b"[]"}, "at least one"),
        ({"image": PNG, "labels": b'["a", "a"]'}, "distinct"),
        ({"image": PNG, "labels": b'["a", " "]'}, "blank"),
        ({"image": PNG, "purify": b"maybe"}, "true or false"),
        ({"image": PNG, "top_k": b"0"}, "top_k"),
        ({"image": PNG, "top_k": b"x"}, "top_k"),
        ({"image": PNG, "colour": b"red"}, "unknown form field"),
    ],
)
def test_bad_requests_are_400(parts, match):
    with pytest.raises(BadInput, match=match) as info:
        parse_request(parts, "multipart/form-data", LIMITS)
    assert info.value.http_status == 400


def test_label_limits():
    with pytest.raises(BadInput, match="limit is 2"):
        parse_request({"image": PNG, "labels": b'["a","b","c"]'}, None, RequestLimits(max_labels=2))
    with pytest.raises(BadInput, match="longer than"):
        parse_request({"image": PNG, "labels": b'["abcdef"]'}, None, RequestLimits(max_label_chars=3))


def test_wrong_media_types_are_415():
    with pytest.raises(UnsupportedMediaType) as info:
        parse_request({"body": PNG}, "text/plain", LIMITS)
    assert info.value.http_status == 415
    with pytest.raises(UnsupportedMediaType):
        parse_request({"body": {"json": "decoded by the server"}}, None, LIMITS)


def test_response_contract_fields():
    fields = set(PredictResponse.model_fields)
    assert fields == {"predictions", "purified", "anchor_score", "prediction_shift", "flipped", "flagged", "model", "attack_score"}


def test_deployment_thread_override(tmp_path):
    """k8s sets CLIPSHIELD_ORT_THREADS from the CPU limit; it replaces the archive's intra-op threads."""
    import pytest

    from clipshield.service.settings import ServingConfig, load_serving_config

    path = tmp_path / "serving.json"
    path.write_text(ServingConfig().model_dump_json())
    assert load_serving_config(path, {}).runtime.intra_op_threads == ServingConfig().runtime.intra_op_threads
    assert load_serving_config(path, {"CLIPSHIELD_ORT_THREADS": "4"}).runtime.intra_op_threads == 4
    assert load_serving_config(tmp_path / "absent.json", {"CLIPSHIELD_ORT_THREADS": "2"}).runtime.intra_op_threads == 2
    with pytest.raises(ValueError, match="CLIPSHIELD_ORT_THREADS"):
        load_serving_config(path, {"CLIPSHIELD_ORT_THREADS": "many"})
    with pytest.raises(ValueError):
        load_serving_config(path, {"CLIPSHIELD_ORT_THREADS": "0"})
