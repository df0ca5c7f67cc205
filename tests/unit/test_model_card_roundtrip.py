"""What is measured is what is served (issue 11): one model card from `finetune` through `export` and
`archive` to the handler's describe answer and its `clipshield_model_accuracy` gauges; honest
purification signals; one spelling of attack labels in the demo and export."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("ts")

EVAL_SET = "miniworld/plain/color_shape/seen"
STEPS, BATCH, IMAGES = 3, 8, 40


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    """A tiny TeCoA run through the CLI: 3 steps of batch 8 over 40 images, evaluated on 16 images."""
    from clipshield.cli.main import main

    out = tmp_path_factory.mktemp("ft") / "run"
    argv = [
        "finetune",
        "--method",
        "tecoa",
        "--steps",
        str(STEPS),
        "--batch-size",
        str(BATCH),
        "--data-limit",
        str(IMAGES),
        "--eval-datasets",
        EVAL_SET,
        "--eval-limit",
        "16",
        "--eval-steps",
        "2",
        "--threads",
        "1",
        "--output",
        str(out),
    ]
    assert main(argv) == 0
    return out / "final"


@pytest.fixture(scope="module")
def archived(finetuned, tmp_path_factory):
    from clipshield.cli.main import main

    root = tmp_path_factory.mktemp("exp")
    assert main(["export", "--model", str(finetuned), "--out", str(root / "export"), "--version", "3.1", "--threads", "1"]) == 0
    assert main(["archive", "--export", str(root / "export"), "--model-store", str(root / "store"), "--format", "no-archive"]) == 0
    return root / "export", root / "store" / "clipshield"


def _describe(folder):
    from clipshield.handlers.torchserve.handler import ClipshieldHandler
    from tests.unit.test_service_handler import FakeContext

    ctx = FakeContext(folder, [{"describe": "True"}])
    handler = ClipshieldHandler()
    handler.initialize(ctx)
    (answer,) = handler.handle([{}], ctx)
    describe = json.loads(answer)
    assert {"model", "bundle", "runtime", "server"} <= set(describe)  # card, bundle versions, providers, server version
    return describe["model"], ctx


def test_finetune_card_records_what_ran(finetuned):
    card = json.loads((finetuned / "model_card.json").read_text())
    training = card["training"]
    assert card["source"] == "finetune" and training["method"] == "tecoa"
    assert (training["steps"], training["batch_size"], training["image_size"]) == (STEPS, BATCH, 32)
    assert training["epochs"] == pytest.approx(STEPS * BATCH / IMAGES)
    assert training["data"]["images"] == IMAGES


def test_served_card_and_gauges_carry_the_finetune_results(finetuned, archived):
    from clipshield.service.card import ModelCard, read_card_file

    ft = read_card_file(finetuned / "model_card.json")
    assert {e.attack for e in ft.accuracy} == {"none", "pgd2-linf-4/255"} and all(e.n == 16 for e in ft.accuracy)
    served, ctx = _describe(archived[1])
    assert served["source"] == "export" and served["version"] == "3.1" and served["name"] == ft.name
    card = ModelCard.model_validate(served)  # the describe answer is a valid card
    assert card.training == ft.training and card.training.steps == STEPS  # steps, epochs, image size as they ran
    assert card.base_model == ft.base_model and card.finetune_provenance == ft.provenance
    assert card.weights_digest == ft.weights_digest
    assert [(a["dataset"], a["attack"], a["value"]) for a in served["accuracy"]] == [(e.dataset, e.attack, e.value) for e in ft.accuracy]
    assert served["parity"]["image_batch_1"] <= 1e-4
    assert not {"purify_sweep", "flag"} & set(served) and served["purify"]["enabled"] is False  # not measured: absent
    gauges = ctx.metrics.metrics["clipshield_model_accuracy"].values
    assert sorted((dims[2], dims[3], dims[4], v) for v, dims in gauges) == sorted(
        (e.dataset, e.attack, "false", e.value) for e in ft.accuracy
    )


def test_export_refuses_a_card_for_other_weights(finetuned, tmp_path, miniworld_model):
    from clipshield.export import ExportError, export_model
    from clipshield.service.card import read_card_file

    with pytest.raises(ExportError, match="other weights"):
        export_model(miniworld_model, tmp_path / "x", finetune_card=read_card_file(finetuned / "model_card.json"))


def test_prediction_shift_varies_across_inputs_unlike_the_embedding_shift(archived):
    """Per-sample purification rotates every embedding by the same angle, so the L2 shift of the embedding is
    one number for all inputs; the served `prediction_shift` (probability mass moved) is not."""
    from clipshield.datasets.registry import DatasetRequest, build_dataset
    from clipshield.service import purify_np
    from clipshield.service.inference import ClipshieldService, RawRequest
    from clipshield.service.preprocess import encode_png

    service = ClipshieldService.from_folder(archived[0])
    images = build_dataset("miniworld/noisy/color_shape/seen", DatasetRequest(limit=8)).images()
    e = purify_np.normalize(service.image_encoder(images.numpy()))
    l2 = np.linalg.norm(purify_np.purify(e, service.anchor, 2, 0.5) - e, axis=1)
    assert np.ptp(l2) < 1e-5  # the old signal: constant
    results = service.predict([RawRequest({"image": encode_png(img.numpy()), "purify": b"true"}, "multipart/form-data") for img in images])
    shifts = [r.prediction_shift for r in results]
    assert all(0 <= s <= 1 for s in shifts) and np.ptp(shifts) > 1e-3, shifts


def test_demo_and_export_label_the_same_metrics_alike():
    from clipshield.cli.commands.demo import DEMO_STEPS, demo_accuracy
    from clipshield.export.purify_calibration import SweepConfig, SweepRow, _choose
    from clipshield.service.config import PreprocessConfig

    eps = 4 / 255
    demo = demo_accuracy({EVAL_SET: (0.9, 0.2)}, 16, eps, PreprocessConfig(image_size=32))
    export = _choose(SweepConfig(eps=eps, steps=DEMO_STEPS), 0.9, 0.2, [SweepRow(steps=1, step_size=0.1, clean=0.9, robust_bpda=0.2)], 16)
    assert (
        {(a.attack, a.purified) for a in demo}
        == {(a.attack, a.purified) for a in export.accuracy}
        == {("none", False), ("pgd10-linf-4/255", False)}
    )


def test_describe_is_decided_per_item_not_per_batch(archived):
    """A prediction batched with a describe request gets its prediction; the describe item gets the card."""
    from clipshield.handlers.torchserve.handler import ClipshieldHandler
    from clipshield.service.preprocess import encode_png
    from tests.unit.test_service_handler import FakeContext

    png = encode_png(torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0)).numpy())
    ctx = FakeContext(archived[1], [{"Content-Type": "image/png"}, {"describe": "True"}, {"Content-Type": "image/png"}])
    handler = ClipshieldHandler()
    handler.initialize(ctx)
    first, described, third = (json.loads(a) for a in handler.handle([{"body": bytearray(png)}, {}, {"body": bytearray(png)}], ctx))
    card = described["model"]
    assert "predictions" in first and first == third and card["source"] == "export" and card["training"]["steps"] == STEPS


def test_old_finetune_card_is_a_clear_error(tmp_path):
    from clipshield.service.card import SCHEMA_VERSION
    from clipshield.service.errors import ConfigError
    from clipshield.training.model_card import read_finetune_card

    assert read_finetune_card(tmp_path) is None
    (tmp_path / "model_card.json").write_text(json.dumps({"schema_version": 1, "method": "tecoa", "results": {}}))
    with pytest.raises(ConfigError, match=f"not a schema-{SCHEMA_VERSION} model card"):
        read_finetune_card(tmp_path)


def test_export_measurement_replaces_the_same_finetune_gauge_and_cards_refuse_duplicates():
    from pydantic import ValidationError

    from clipshield.export.exporter import merge_accuracy
    from clipshield.service.card import AccuracyEntry, ModelCard

    ft = [
        AccuracyEntry(dataset=EVAL_SET, attack="none", purified=False, value=0.5, n=16),
        AccuracyEntry(dataset=EVAL_SET, attack="pgd2-linf-4/255", purified=False, value=0.1, n=16),
    ]
    ex = [AccuracyEntry(dataset=EVAL_SET, attack="none", purified=False, value=0.6, n=256)]
    merged, notes = merge_accuracy(ft, ex)
    assert [(e.attack, e.value) for e in merged] == [("pgd2-linf-4/255", 0.1), ("none", 0.6)]
    assert len(notes) == 1 and "60.0% (n=256) measured at export replaces 50.0% (n=16)" in notes[0]
    base = dict(
        source="export",
        name="m",
        embed_dim=4,
        image_size=32,
        logit_scale=1.0,
        weights_digest="d",
        provenance={"clipshield_version": "0", "git_commit": "c", "date": "t"},
    )
    with pytest.raises(ValidationError, match="repeat"):
        ModelCard(**base, accuracy=(*ft, *ex))
