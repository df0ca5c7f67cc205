"""The TorchServe adapter with a fake context: per-item status codes, JSON bodies, metrics forwarding."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("ts")


class FakeMetric:
    def __init__(self, name, dims):
        self.name, self.dims, self.values = name, dims, []

    def add_or_update(self, value, dimension_values, request_id=None):
        assert len(dimension_values) == len(self.dims), (self.name, dimension_values)
        self.values.append((value, list(dimension_values)))


class FakeMetrics:
    def __init__(self):
        self.metrics = {}

    def add_metric_to_cache(self, metric_name, unit, dimension_names, metric_type):
        self.metrics[metric_name] = FakeMetric(metric_name, dimension_names)
        return self.metrics[metric_name]


class FakeContext:
    def __init__(self, model_dir, headers):
        self.system_properties = {"model_dir": str(model_dir)}
        self.model_name = "clipshield"
        self.metrics = FakeMetrics()
        self.headers = headers
        self.status, self.content_types = {}, {}

    def get_all_request_header(self, idx):
        return self.headers[idx]

    def set_response_status(self, code=200, phrase="", idx=0):
        self.status[idx] = (code, phrase)

    def set_response_content_type(self, idx, value):
        self.content_types[idx] = value


@pytest.fixture(scope="module")
def archive_dir(miniworld_model, tmp_path_factory):
    from clipshield.export import export_model
    from clipshield.handlers.torchserve.archive import build_archive

    root = tmp_path_factory.mktemp("handler")
    return build_archive(export_model(miniworld_model, root / "export"), root / "store", archive_format="no-archive")


def test_handler_per_item_status_and_metrics(archive_dir):
    from clipshield.handlers.torchserve.handler import ClipshieldHandler
    from clipshield.service.preprocess import encode_png

    png = encode_png(np.random.default_rng(0).random((3, 32, 32)))
    headers = [
        {"Content-Type": "image/png", "body": {"content-type": "image/png"}},
        {"content-type": "image/png"},
        {"Content-Type": "multipart/form-data; boundary=x"},
    ]
    ctx = FakeContext(archive_dir, headers)
    handler = ClipshieldHandler()
    handler.initialize(ctx)
    data = [{"body": bytearray(png)}, {"body": bytearray(b"not an image")}, {"image": png, "top_k": "2", "purify": "false"}]
    out = handler.handle(data, ctx)
    assert len(out) == 3
    assert ctx.status == {1: (415, "Unsupported Media Type")}
    assert json.loads(out[1]) == {
        "code": 415,
        "type": "UnsupportedMediaType",
        "message": "image format not accepted; send one of PNG, JPEG",
    }
    first, third = json.loads(out[0]), json.loads(out[2])
    assert len(first["predictions"]) == 5 and first["purified"] is False  # unmeasured card: purification off by default
    assert len(third["predictions"]) == 2 and third["purified"] is False
    assert set(ctx.content_types.values()) == {"application/json"}
    outcomes = [dims[-1] for _v, dims in ctx.metrics.metrics["clipshield_requests_total"].values]
    assert sorted(outcomes) == ["ok", "ok", "unsupported_media"]
    assert ctx.metrics.metrics["clipshield_encode_seconds"].values[0][1] == ["clipshield", "Model"]


def test_handler_refuses_tampered_archive(archive_dir, tmp_path, caplog):
    import shutil

    from clipshield.handlers.torchserve.handler import ClipshieldHandler
    from clipshield.service.errors import ModelLoadError

    copy = tmp_path / "copy"
    shutil.copytree(archive_dir, copy)
    with (copy / "labels.json").open("a") as fh:
        fh.write(" ")
    with pytest.raises(ModelLoadError, match=r"sha256 mismatch for labels\.json"):
        ClipshieldHandler().initialize(FakeContext(copy, []))
    assert "refusing to load" in caplog.text


def test_reason_phrase_is_ascii_whatever_the_message(archive_dir):
    """TorchServe 0.12 frames the reason phrase by character count but sends UTF-8 bytes: a
    non-ASCII phrase corrupted the worker protocol and killed the worker (found by the HTTP fuzz)."""
    from clipshield.handlers.torchserve.handler import ClipshieldHandler

    ctx = FakeContext(archive_dir, [{"Content-Type": "multipart/form-data; boundary=x"}])
    handler = ClipshieldHandler()
    handler.initialize(ctx)
    out = handler.handle([{"image": b"\x89PNG", "purify": "\u00ff\u00ff\u2603"}], ctx)
    code, phrase = ctx.status[0]
    assert code == 400 and phrase == "Bad Request" and phrase.isascii()
    assert "\u00ff\u00ff" in json.loads(out[0])["message"]
