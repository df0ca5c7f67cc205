"""Property-based fuzzing of the serving input layer (issue 7): decoding and request parsing.

Contract under test: whatever bytes or form fields arrive, `service/` either returns a valid
result or raises a `clipshield.service.errors.BadInput` subclass (400/413/415) - never another exception,
which a server would turn into a 500. Example counts are bounded so the module runs in seconds.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st
from PIL import Image

from clipshield.service.api import FORM_FIELDS, PredictOptions, check_content_type, parse_request
from clipshield.service.config import PreprocessConfig
from clipshield.service.errors import BadInput
from clipshield.service.preprocess import decode_image, load_pixels
from clipshield.service.settings import DecodeLimits, RequestLimits

LIMITS = DecodeLimits(max_bytes=64 * 1024, max_pixels=512 * 512)
REQ = RequestLimits()
CFG = PreprocessConfig(image_size=32)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def _seed_images() -> list[bytes]:
    rng = np.random.default_rng(0)
    rgb = Image.fromarray((rng.random((12, 9, 3)) * 255).astype(np.uint8), "RGB")
    return [
        _encode(rgb, "PNG"),
        _encode(rgb, "JPEG"),
        _encode(rgb.convert("P"), "PNG"),
        _encode(rgb.convert("RGBA"), "PNG"),
        _encode(Image.fromarray((rng.random((5, 7)) * 65535).astype(np.uint16)), "PNG"),
        _encode(rgb.convert("CMYK"), "JPEG"),
    ]


SEEDS = _seed_images()


@st.composite
def mutated_images(draw) -> bytes:
    """A valid seed image with random byte flips, a random cut, or random bytes spliced in."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 4))):
        pos = draw(st.integers(0, len(data) - 1))
        data[pos] = draw(st.integers(0, 255))
    action = draw(st.sampled_from(["none", "cut", "splice"]))
    if action == "cut":
        data = data[: draw(st.integers(0, len(data)))]
    elif action == "splice":
        pos = draw(st.integers(0, len(data)))
        data[pos:pos] = draw(st.binary(max_size=64))
    return bytes(data)


def _decode_contract(data: bytes) -> None:
    try:
        img = decode_image(data, LIMITS)
    except BadInput:
        return
    assert img.mode == "RGB" and img.size[0] * img.size[1] <= LIMITS.max_pixels
    pixels = load_pixels(data, CFG, LIMITS)
    assert pixels.shape == (3, 32, 32) and pixels.dtype == np.float32
    assert np.isfinite(pixels).all() and pixels.min() >= 0.0 and pixels.max() <= 1.0


@FUZZ
@given(st.binary(max_size=4096))
def test_random_bytes_decode_or_bad_input(data):
    _decode_contract(data)


@FUZZ
@given(st.sampled_from([b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff"]), st.binary(max_size=2048))
def test_magic_prefixed_garbage_decode_or_bad_input(magic, tail):
    _decode_contract(magic + tail)


@settings(max_examples=400, deadline=None)
@given(mutated_images())
def test_mutated_images_decode_or_bad_input(data):
    _decode_contract(data)


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from(["RGB", "RGBA", "L", "LA", "P", "1", "I;16"]),
    st.integers(1, 300),
    st.integers(1, 300),
)
def test_every_png_mode_and_shape_gives_model_pixels(mode, width, height):
    """Any PNG mode and size (1x1, strips) decodes to [3, S, S] pixels, or is refused as too elongated."""
    img = Image.new(mode, (width, height))
    data = _encode(img, "PNG")
    if max(width, height) / min(width, height) > LIMITS.max_aspect_ratio:
        with pytest.raises(BadInput, match="aspect ratio"):
            decode_image(data, LIMITS)
    else:
        _decode_contract(data)
        decode_image(data, LIMITS)  # must not raise for a well-formed image


# Every code point, lone surrogates and control characters included (hypothesis skips Cs by default).
ANY_CHAR = st.one_of(
    st.sampled_from(["\ud800", "\udfff", "\x00", "\x85", "\u2028", "\ufeff", " ", "\t"]),  # boosted: rare otherwise
    st.characters(exclude_categories=()),
)
_values = st.one_of(
    st.none(),
    st.binary(max_size=64),
    st.text(max_size=64),
    st.integers(-(10**30), 10**30),
    st.booleans(),
    st.floats(allow_nan=True),
    st.lists(st.text(max_size=8), max_size=5),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=3),
)
_field_names = st.one_of(st.sampled_from(list(FORM_FIELDS) + ["body", "data"]), st.text(max_size=8))


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(_field_names, _values, max_size=5),
    st.one_of(st.none(), st.text(max_size=40), st.sampled_from(["image/png", "multipart/form-data; boundary=x", "text/plain"])),
)
def test_parse_request_returns_options_or_bad_input(parts, content_type):
    try:
        image, options = parse_request(parts, content_type, REQ)
    except BadInput:
        return
    assert isinstance(image, bytes) and isinstance(options, PredictOptions)
    if options.top_k is not None:
        assert 1 <= options.top_k <= REQ.max_top_k
    if options.labels is not None:
        assert 1 <= len(options.labels) <= REQ.max_labels and len(set(options.labels)) == len(options.labels)
        assert all(s.strip() and len(s) <= REQ.max_label_chars for s in options.labels)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=200),
        st.text(ANY_CHAR, max_size=200),
        st.lists(st.one_of(st.text(ANY_CHAR, max_size=30), st.integers()), max_size=8),
    ),
    st.one_of(st.binary(max_size=12), st.text(max_size=12)),
    st.one_of(st.binary(max_size=12), st.text(max_size=12)),
)
def test_option_fields_parse_or_bad_input(labels, top_k, purify):
    """Raw (bytes/str, possibly non-UTF-8, lone surrogates, control characters) option fields."""
    parts = {"image": b"\x89PNG", "labels": labels, "top_k": top_k, "purify": purify}
    try:
        _, options = parse_request(parts, "multipart/form-data; boundary=x", REQ)
    except BadInput:
        return
    assert options.labels is not None and all(s.encode("utf-8") for s in options.labels)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80))
def test_content_type_accepted_or_415(content_type):
    try:
        check_content_type(content_type)
    except BadInput as exc:
        assert exc.http_status == 415


@pytest.fixture(scope="module")
def service_bundle(miniworld_model, tmp_path_factory):
    from clipshield.export import export_model
    from clipshield.service.inference import ClipshieldService

    folder = export_model(miniworld_model, tmp_path_factory.mktemp("fuzz") / "export")
    return ClipshieldService.from_folder(folder)


def test_service_answers_fuzzed_labels_without_500(service_bundle):
    """Labels go through the tokenizer and text encoder: no string may crash them (seen: lone
    surrogates and NUL used to give a 500)."""
    from clipshield.service.api import PredictResponse
    from clipshield.service.inference import RawRequest

    png = SEEDS[0]

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.lists(st.text(ANY_CHAR, min_size=1, max_size=40), min_size=1, max_size=6, unique=True))
    @example(["\ud800"])
    @example(["a\x00b", "cat"])
    def check(labels):
        req = RawRequest({"image": png, "labels": json.dumps(labels).encode()}, "multipart/form-data; boundary=x")
        (result,) = service_bundle.predict([req])
        assert isinstance(result, (PredictResponse, BadInput)), result
        if isinstance(result, PredictResponse):
            assert {p.label for p in result.predictions} <= set(labels)

    check()
