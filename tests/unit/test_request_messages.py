"""Request errors speak clipshield's words, never pydantic's (issue 17 item 8).

Every request-validation path of `clipshield.service.api` is driven to its error, and each message must be one
of ours: no "Value error, ...", "Input should be ...", "1 validation error for ...".
"""

from __future__ import annotations

import pytest

from clipshield.service.api import options_from, parse_request
from clipshield.service.errors import BadInput
from clipshield.service.settings import RequestLimits

PNG = b"\x89PNG\r\n\x1a\n rest"
PYDANTIC_PHRASES = ("Value error", "Input should be", "validation error", "pydantic", "errors.pydantic.dev", "type=")

# (parts, content type, limits, words our message must hold)
REQUESTS = [
    ({}, None, {}, "no image"),
    ({"image": "text"}, None, {}, "binary"),
    ({"image": PNG, "colour": b"red"}, None, {}, "unknown form field"),
    ({"body": PNG}, "text/plain", {}, "not accepted"),
    ({"image": PNG, "labels": b"cat"}, None, {}, "JSON list of strings"),
    ({"image": PNG, "labels": b"[1, 2]"}, None, {}, "JSON list of strings"),
    ({"image": PNG, "labels": b'{"a": 1}'}, None, {}, "JSON list of strings"),
    ({"image": PNG, "labels": b"\xff\xfe"}, None, {}, "UTF-8"),
    ({"image": PNG, "labels": b"[]"}, None, {}, "at least one label"),
    ({"image": PNG, "labels": b'["a", " "]'}, None, {}, "blank label(s) at position(s) [1]"),
    ({"image": PNG, "labels": b'["cat", "dog", "cat"]'}, None, {}, "labels must be distinct; got duplicates: 'cat'"),
    ({"image": PNG, "labels": b'["a","b","c"]'}, None, {"max_labels": 2}, "the limit is 2"),
    ({"image": PNG, "labels": b'["abcdef"]'}, None, {"max_label_chars": 3}, "longer than 3"),
    ({"image": PNG, "labels": b'["\\ud800"]'}, None, {}, "lone surrogate"),
    ({"image": PNG, "labels": b'["a\\u0007"]'}, None, {}, "control character"),
    ({"image": PNG, "purify": b"maybe"}, None, {}, "true or false"),
    ({"image": PNG, "purify": b"\xff"}, None, {}, "UTF-8"),
    ({"image": PNG, "attack_score": b"sometimes"}, None, {}, "field 'attack_score' must be true or false"),
    ({"image": PNG, "attack_score": b"\xff"}, None, {}, "field 'attack_score' is not UTF-8"),
    ({"image": PNG, "top_k": b"0"}, None, {}, "top_k"),
    ({"image": PNG, "top_k": b"x"}, None, {}, "top_k"),
    ({"image": PNG, "top_k": b"\xc2\xb2"}, None, {}, "top_k"),
]


def _assert_ours(message: str) -> None:
    for phrase in PYDANTIC_PHRASES:
        assert phrase.lower() not in message.lower(), message


@pytest.mark.parametrize("parts, content_type, limits, words", REQUESTS)
def test_every_request_error_is_in_our_words(parts, content_type, limits, words):
    with pytest.raises(BadInput) as info:
        parse_request(parts, content_type, RequestLimits(**limits))
    _assert_ours(str(info.value))
    assert words in str(info.value)


@pytest.mark.parametrize(
    "raw, words",
    [
        ({"labels": ()}, "at least one label"),
        ({"labels": ("a", "a", "b", "b")}, "got duplicates: 'a', 'b'"),
        ({"labels": ("a", "")}, "blank"),
        ({"labels": (1,)}, "field 'labels' must be a JSON list of strings"),
        ({"labels": "ab"}, "field 'labels' must be a JSON list of strings"),
        ({"top_k": 0}, "field 'top_k' must be at least 1"),
        ({"top_k": "x"}, "field 'top_k' must be an integer"),
        ({"top_k": 1.5}, "field 'top_k' must be an integer"),
        ({"purify": "maybe"}, "field 'purify' must be true or false"),
        ({"attack_score": "maybe"}, "field 'attack_score' must be true or false"),
        ({"colour": "red"}, "unknown field 'colour'; accepted: ['image', 'labels', 'purify', 'top_k', 'attack_score']"),
    ],
)
def test_option_validation_fallback_is_in_our_words(raw, words):
    """Options that bypass parse_request's own checks still get our wording from the model's errors."""
    with pytest.raises(BadInput) as info:
        options_from(raw)
    _assert_ours(str(info.value))
    assert words in str(info.value)
    assert info.value.http_status == 400
