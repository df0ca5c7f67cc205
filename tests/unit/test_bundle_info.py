"""Bundle versions: written at export and archive, refused when unreadable, shown by describe."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest

from clipshield.service import bundle as B
from clipshield.service.bundle_info import BUNDLE_INFO, FORMAT_VERSION, READABLE_FORMATS, read_bundle_info
from clipshield.service.errors import ModelLoadError
from clipshield.service.provenance import git_commit, package_version


@pytest.fixture(scope="module")
def exported(miniworld_model, tmp_path_factory):
    from clipshield.export import export_model

    return export_model(miniworld_model, tmp_path_factory.mktemp("info") / "export", version="3.1")


def _with_format(src, dst, version):
    shutil.copytree(src, dst)
    raw = json.loads((dst / BUNDLE_INFO).read_text())
    raw["format_version"] = version
    raw["layout_of_the_future"] = {"x": 1}  # a newer format may carry fields this code does not know
    (dst / BUNDLE_INFO).write_text(json.dumps(raw))
    B.write_manifest(dst)  # consistent checksums: only the format check can refuse it
    return dst


def test_export_records_format_and_build(exported):
    info = read_bundle_info(exported)
    assert info.format_version == FORMAT_VERSION and FORMAT_VERSION in READABLE_FORMATS
    assert info.exported_by.clipshield_version == package_version()
    assert info.exported_by.git_commit == git_commit()
    assert info.archived_by is None
    assert BUNDLE_INFO in B.verify_manifest(exported)


def test_archive_adds_its_build_and_keeps_the_export(exported, tmp_path):
    from clipshield.handlers.torchserve.archive import build_archive
    from clipshield.handlers.torchserve.served_archive import archive_card, archive_info

    folder = build_archive(exported, tmp_path / "store", archive_format="no-archive")
    mar = build_archive(exported, tmp_path / "store2")
    for path in (folder, mar):
        info = archive_info(path)
        assert info.exported_by == read_bundle_info(exported).exported_by
        assert info.archived_by is not None and info.archived_by.clipshield_version == package_version()
        assert (archive_card(path).name, archive_card(path).version) == (B.read_card(exported).name, "3.1")
    assert BUNDLE_INFO in B.verify_manifest(folder)


def test_unreadable_format_refused_with_one_log_line(exported, tmp_path, caplog):
    from clipshield.service.inference import ClipshieldService

    bundle = _with_format(exported, tmp_path / "future", FORMAT_VERSION + 98)
    with (
        caplog.at_level(logging.ERROR, logger="clipshield.service.bundle_info"),
        pytest.raises(ModelLoadError, match=rf"bundle format {FORMAT_VERSION + 98} .*reads formats \[1, {FORMAT_VERSION}\]"),
    ):
        ClipshieldService.from_folder(bundle)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].startswith(f"refusing to load {bundle}") and package_version() in errors[0]


def test_a_format_1_server_refuses_a_format_2_bundle(exported, monkeypatch):
    """Format 2 (one detector, issue 24): a server that reads format 1 only would serve `flagged` without the card's
    detector, so it refuses the bundle, naming both formats."""
    from clipshield.service import bundle_info

    monkeypatch.setattr(bundle_info, "READABLE_FORMATS", (1,))
    with pytest.raises(ModelLoadError, match=r"bundle format 2 .*reads formats \[1\]"):
        read_bundle_info(exported)


def test_missing_bundle_info_refused_and_archive_refuses_too(exported, tmp_path):
    from clipshield.handlers.torchserve.archive import build_archive
    from clipshield.handlers.torchserve.served_archive import check_archives

    legacy = tmp_path / "legacy"
    shutil.copytree(exported, legacy)
    (legacy / BUNDLE_INFO).unlink()
    B.write_manifest(legacy)
    with pytest.raises(ModelLoadError, match=r"bundle_info\.json is missing"):
        read_bundle_info(legacy)
    with pytest.raises(ModelLoadError, match=r"bundle_info\.json is missing"):
        build_archive(legacy, tmp_path / "store")
    # a .mar whose bundle has an unreadable format is refused by serve's pre-check, before TorchServe starts
    store = tmp_path / "store3"
    build_archive(exported, store)
    with pytest.raises(ModelLoadError, match="no archive"):
        check_archives(store, "clipshield=absent.mar")
    assert check_archives(store, "clipshield=clipshield.mar")["clipshield"].format_version == FORMAT_VERSION


def test_handler_describe_and_clean_refusal(exported, tmp_path):
    pytest.importorskip("ts")
    from clipshield.handlers.torchserve.archive import build_archive
    from clipshield.handlers.torchserve.handler import ClipshieldHandler
    from tests.unit.test_service_handler import FakeContext

    archive = build_archive(exported, tmp_path / "store", archive_format="no-archive")
    from clipshield.service.preprocess import encode_png

    png = encode_png(np.random.default_rng(0).random((3, 32, 32)))
    ctx = FakeContext(archive, [{"Content-Type": "image/png"}, {"describe": "True"}])  # decided per item, not by item 0
    handler = ClipshieldHandler()
    handler.initialize(ctx)
    answer, described = (json.loads(x) for x in handler.handle([{"body": bytearray(png)}, {}], ctx))
    assert answer["model"] == {"name": B.read_card(exported).name, "version": "3.1"} and len(answer["predictions"]) == 5
    assert (described["model"]["name"], described["model"]["version"]) == (B.read_card(exported).name, "3.1")
    assert described["bundle"]["format_version"] == FORMAT_VERSION
    assert described["bundle"]["exported_by"]["git_commit"] == git_commit()
    assert described["runtime"]["image_encoder_provider"] == "CPUExecutionProvider"
    assert described["server"]["clipshield_version"] == package_version()
    info = ctx.metrics.metrics["clipshield_runtime_info"].values
    assert info and info[0][1][2] == "CPUExecutionProvider"

    future = _with_format(archive, tmp_path / "future", FORMAT_VERSION + 1)
    with pytest.raises(ModelLoadError, match="not loaded: bundle format") as err:
        ClipshieldHandler().initialize(FakeContext(future, []))
    assert err.value.__cause__ is None and err.value.__suppress_context__  # one line, no chained traceback
