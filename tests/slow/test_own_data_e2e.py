"""A user's own photos, end to end (issue 27, part 8): class folders -> fine-tune -> evaluate -> export with
default labels -> archive -> serve on TorchServe and KServe, every step through the CLI with its defaults.

Asserts the five promises: the learning rate reached its peak; the card carries accuracy on the folder's
test split; the served default labels are the folder's classes; the version names the run; a second
fine-tune with the same default output does not overwrite the first. Each also has a fast unit-level
check in tests/unit/test_own_data_finetune.py.
"""

from __future__ import annotations

import csv
import json

import pytest

from tests.integration import serving_helpers as H
from tests.unit.own_data_helpers import class_names, write_photo_tree

pytestmark = pytest.mark.slow

STEPS = 24
FINETUNE = ["finetune", "--method", "tga-zsr", "--data", "folder/photos", "--data-root", "data", "--steps", str(STEPS)]
FAST = ["--threads", "1", "--eval-limit", "12", "--eval-steps", "2"]


def _finetune_twice(main, runs):
    """Two identical fine-tunes with the default output; (first run folder, its final card bytes before the second)."""
    assert main([*FINETUNE, *FAST]) == 0
    (first,) = sorted(runs.iterdir())
    card_before = (first / "final" / "model_card.json").read_bytes()
    assert main([*FINETUNE, *FAST]) == 0
    return first, card_before


def _served_by_torchserve(store, png):
    from clipshield.handlers.torchserve.launcher import describe_model, start_server, stop_server

    handle = start_server(store, H.serve_config(workers=1, models="clipshield=clipshield"))
    try:
        answer = H.post_png(handle, png).json()
        return answer, describe_model(handle, "clipshield")
    finally:
        stop_server(store)


def _served_by_kserve(main, bundle, store, png):
    import requests

    port = H.free_port()
    common = ["serve", "--runtime", "kserve", "--model-store", str(store), "--address", f"http://127.0.0.1:{port}"]
    assert main([*common, "--bundle", str(bundle)]) == 0
    try:
        body = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [_b64(png)]}]}
        url = f"http://127.0.0.1:{port}/v2/models/clipshield"
        answer = requests.post(f"{url}/infer", json=body, timeout=H.TIMEOUT_S).json()
        return answer, requests.get(url, timeout=H.TIMEOUT_S).json()
    finally:
        main([*common, "--stop"])


def _b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode()


def test_own_photos_end_to_end(tmp_path, monkeypatch):
    from clipshield.cli.main import main

    monkeypatch.chdir(tmp_path)
    write_photo_tree(tmp_path / "data")  # 3 classes: 12 train + 4 test crops each, classnames.txt
    runs = tmp_path / "runs" / "finetune"
    first, card_before = _finetune_twice(main, runs)
    # 5. a second fine-tune with the same default output did not overwrite the first
    assert len(list(runs.iterdir())) == 2 and (first / "final" / "model_card.json").read_bytes() == card_before
    final = first / "final"
    card = json.loads((final / "model_card.json").read_text())
    # 1. the learning rate reached its peak
    with (first / "metrics.csv").open() as fh:
        lrs = [float(r["lr"]) for r in csv.DictReader(fh)]
    assert max(lrs) == pytest.approx(card["training"]["hyperparameters"]["lr"], rel=1e-5)
    assert (
        main(["evaluate", "--model", str(final), "--datasets", "folder/photos", "--data-root", "data", "--eps", "1", "--steps", "2"]) == 0
    )
    assert main(["export", "--model", str(final), "--out", "runs/export/own", "--threads", "1"]) == 0
    assert main(["archive", "--export", "runs/export/own", "--model-store", "store", "--format", "no-archive", "--workers", "1"]) == 0
    exported = json.loads((tmp_path / "runs/export/own/model_card.json").read_text())
    # 2. the card carries accuracy on the folder's test split (4 test images x 3 classes)
    assert {(e["dataset"], e["n"]) for e in exported["accuracy"]} == {("folder/photos", 12)}
    version = f"ft{STEPS}-{exported['weights_digest'][:8]}"
    png = (tmp_path / "data/photos/test/cat/0.png").read_bytes()
    ts_answer, ts_describe = _served_by_torchserve(tmp_path / "store", png)
    ks_answer, ks_meta = _served_by_kserve(main, tmp_path / "runs/export/own", tmp_path / "ks_store", png)
    # 3. the served default labels are the folder's classes; 4. the version names the run
    assert {p["label"] for p in ts_answer["predictions"]} == set(class_names())
    assert ts_describe["labels"]["classnames"] == class_names() and ts_answer["model"]["version"] == version
    labels = next(o["data"] for o in ks_answer["outputs"] if o["name"] == "labels")
    assert set(labels) == set(class_names()) and ks_answer["model_version"] == version
    assert ks_meta["parameters"]["labels"]["classnames"] == class_names()
    (cell,) = json.loads((tmp_path / "runs/evaluate/summary.json").read_text())["cells"]
    report = (tmp_path / "runs/evaluate/results.md").read_text()
    assert f"{final} @{cell['key']['weights'][:8]}" in report  # the report names the weights, the path is a label
