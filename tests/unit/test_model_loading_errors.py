"""The first hour with real models: no network, missing weights files and unknown architectures give
one clear line each (issue 17 items 5-7), fast, without the hub client's retry noise."""

from __future__ import annotations

import logging
import time
import warnings

import pytest

from clipshield.cli.main import main
from clipshield.models import factory as models
from clipshield.models.factory import load_model
from clipshield.service.errors import ModelLoadError


@pytest.fixture
def online(monkeypatch):
    """Offline switches off, as on a user's machine (the test suite turns CLIPSHIELD_OFFLINE on)."""
    for key in ("CLIPSHIELD_OFFLINE", "HF_HUB_OFFLINE", "HF_ENDPOINT"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(models, "_cached_hf_file", lambda cfg, cache_dir: None)


def _no_download(*_a, **_k):
    raise AssertionError("download attempted although the host is unreachable")


def test_unreachable_hub_fails_at_once_naming_offline_and_local_file(online, monkeypatch):
    import open_clip.pretrained

    monkeypatch.setattr(models, "hub_reachable", lambda host, port, timeout=2.0: False)
    monkeypatch.setattr(open_clip.pretrained, "download_pretrained", _no_download)
    with pytest.raises(ModelLoadError) as info:
        load_model("ViT-B-32", pretrained="openai", offline=False)
    message = str(info.value)
    assert "\n" not in message
    assert "huggingface.co" in message and "--offline" in message and "--pretrained" in message


def test_unreachable_hub_uses_cached_weights(online, monkeypatch, tmp_path):
    import open_clip.pretrained

    cached = tmp_path / "open_clip_model.safetensors"
    monkeypatch.setattr(models, "_cached_hf_file", lambda cfg, cache_dir: cached)
    monkeypatch.setattr(models, "hub_reachable", lambda host, port, timeout=2.0: False)
    monkeypatch.setattr(open_clip.pretrained, "download_pretrained", _no_download)
    cfg = open_clip.pretrained.get_pretrained_cfg("ViT-B-32", "openai")
    assert models._fetch_weights("ViT-B-32", "openai", cfg, None, offline=False) == cached


def test_probe_of_a_closed_port_is_fast_and_false():
    start = time.monotonic()
    assert models.hub_reachable("127.0.0.1", 9, timeout=2.0) is False  # discard port: nothing listens
    assert time.monotonic() - start < 3.0


def _export_error(args, capsys, tmp_path) -> tuple[int, list[str], float]:
    """Exit status, non-empty output lines and seconds of one `clipshield export` (imports done first)."""
    import open_clip.pretrained  # noqa: F401 - import time (10+ s on a busy machine) is not what is timed

    from clipshield.cli.main import build_parser

    build_parser()
    start = time.monotonic()
    rc = main(["export", *args, "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "out")])
    elapsed = time.monotonic() - start
    captured = capsys.readouterr()
    lines = [line for line in (captured.out + captured.err).splitlines() if line.strip()]
    return rc, lines, elapsed


def test_cli_with_an_unreachable_hub_endpoint_prints_one_line(online, monkeypatch, capsys, tmp_path):
    """Real sockets, no monkeypatched probe: the hub endpoint is a local port nothing listens on."""
    monkeypatch.setenv("HF_ENDPOINT", "https://127.0.0.1:9")
    rc, lines, elapsed = _export_error(["--model", "ViT-B-32", "--pretrained", "openai"], capsys, tmp_path)
    assert rc == 2 and len(lines) == 1, lines
    assert "127.0.0.1" in lines[0] and "--offline" in lines[0] and "--pretrained" in lines[0]
    assert elapsed < 5, elapsed


def test_cli_without_network_prints_one_line_quickly(online, capsys, tmp_path):
    """The real hub host. Where it answers, this would download 600 MB: skipped, saying so."""
    if models.hub_reachable("huggingface.co", 443):
        pytest.skip("huggingface.co is reachable from here; this test covers machines without network")
    rc, lines, elapsed = _export_error(["--model", "ViT-B-32", "--pretrained", "openai"], capsys, tmp_path)
    assert rc == 2 and len(lines) == 1, lines
    assert "huggingface.co" in lines[0] and "--offline" in lines[0]
    assert elapsed < 5, elapsed


def test_download_failure_keeps_the_clients_noise_out(online, monkeypatch, caplog):
    import open_clip.pretrained

    def noisy_download(cfg, cache_dir=None):
        logging.getLogger("huggingface_hub.utils._http").warning("Retrying in 1s [Retry 1/5].")
        logging.getLogger("urllib3.connectionpool").warning("Retrying (Retry(total=4))")
        warnings.warn("hub says hello", UserWarning, stacklevel=2)
        raise OSError("connection reset")

    monkeypatch.setattr(models, "hub_reachable", lambda host, port, timeout=2.0: True)
    monkeypatch.setattr(open_clip.pretrained, "download_pretrained", noisy_download)
    before = {name: logging.getLogger(name).level for name in models.NOISY_LOGGERS}
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.DEBUG):
        warnings.simplefilter("always")
        with pytest.raises(ModelLoadError, match="--offline"):
            load_model("ViT-B-32", pretrained="openai", offline=False)
    assert not [r for r in caplog.records if r.name.startswith(("huggingface_hub", "urllib3"))]
    assert not caught
    assert {name: logging.getLogger(name).level for name in models.NOISY_LOGGERS} == before  # restored


def test_hf_hub_offline_counts_as_offline(online, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="HF_HUB_OFFLINE"):
        load_model("ViT-B-32", pretrained="openai")


@pytest.mark.parametrize("tag", ["/no/such/file.pt", "weights.safetensors", "runs/x/model"])
def test_missing_weights_file_is_reported_as_a_missing_file(tag):
    with pytest.raises(ModelLoadError) as info:
        load_model("ViT-B-32", pretrained=tag, offline=True)
    assert f"weights file not found: {tag}" in str(info.value)
    assert "unknown pretrained tag" not in str(info.value)


def test_a_folder_as_weights_file_is_named(tmp_path):
    with pytest.raises(ModelLoadError, match="is a folder"):
        load_model("ViT-B-32", pretrained=str(tmp_path), offline=True)


def test_missing_weights_file_on_the_cli(capsys, tmp_path):
    rc, lines, _ = _export_error(["--model", "ViT-B-32", "--pretrained", "/no/such/file.pt"], capsys, tmp_path)
    assert rc == 2 and len(lines) == 1 and "not found: /no/such/file.pt" in lines[0], lines


@pytest.mark.parametrize("pretrained", [None, "openai"])
def test_unknown_architecture_with_or_without_tag_lists_close_matches(pretrained):
    import open_clip

    with pytest.raises(ModelLoadError) as info:
        load_model("ViT-Q-99", pretrained=pretrained, offline=True)
    message = str(info.value)
    assert "unknown open_clip architecture 'ViT-Q-99'" in message
    assert "pretrained tag" not in message
    matches = message.split("close matches: ")[1].split(" (")[0].split(", ")
    assert matches and all(m in open_clip.list_models() for m in matches)


def test_close_matches_ignore_case():
    with pytest.raises(ModelLoadError, match=r"close matches: ViT-B-32\b"):
        load_model("vit-b-32", offline=True)


def test_known_architecture_without_tag_asks_for_weights():
    with pytest.raises(ModelLoadError) as info:
        load_model("ViT-B-32", offline=True)
    assert "--pretrained" in str(info.value) and "openai" in str(info.value)
    assert "unknown" not in str(info.value)


def test_missing_model_folder_is_reported_as_missing(tmp_path):
    with pytest.raises(ModelLoadError, match="model not found"):
        load_model(str(tmp_path / "no" / "such"), offline=True)
