"""Issue 11 on a real TorchServe: `finetune` -> `export --model .../final` -> `archive` -> `serve`; the
served describe answer and the `clipshield_model_accuracy` gauges carry the fine-tune card's numbers.

Skips only where Java (needed by TorchServe's frontend) is missing.
"""

from __future__ import annotations

import shutil

import pytest

from tests.integration.serving_helpers import auth, serve_config

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("java") is None, reason="TorchServe needs Java 17+ on PATH; java not found"),
]
requests = pytest.importorskip("requests")

EVAL_SET = "miniworld/plain/color_shape/seen"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from clipshield.cli.main import main
    from clipshield.handlers.torchserve.launcher import start_server, stop_server

    root = tmp_path_factory.mktemp("card")
    run, export, store = root / "run", root / "export", root / "store"
    assert (
        main(
            [
                "finetune",
                "--method",
                "tecoa",
                "--steps",
                "2",
                "--batch-size",
                "8",
                "--data-limit",
                "32",
                "--eval-datasets",
                EVAL_SET,
                "--eval-limit",
                "16",
                "--eval-steps",
                "2",
                "--threads",
                "1",
                "--output",
                str(run),
            ]
        )
        == 0
    )
    assert main(["export", "--model", str(run / "final"), "--out", str(export), "--threads", "1"]) == 0
    assert main(["archive", "--export", str(export), "--model-store", str(store), "--workers", "1"]) == 0
    handle = start_server(store, serve_config(workers=1))
    yield handle, run / "final"
    assert stop_server(store)


def test_served_describe_and_gauges_carry_the_finetune_card(served):
    from clipshield.service.card import ModelCard, read_card_file

    handle, final = served
    ft = read_card_file(final / "model_card.json")
    r = requests.get(
        handle.config.management_address + "/models/clipshield?customized=true", headers=auth(handle, "management"), timeout=30
    )
    assert r.status_code == 200, r.text
    card = ModelCard.model_validate(r.json()[0]["customizedMetadata"]["model"])
    assert (card.training.steps, card.training.batch_size, card.training.image_size) == (2, 8, 32)
    assert card.training.epochs == pytest.approx(2 * 8 / 32) and card.training == ft.training
    assert card.accuracy == ft.accuracy and len(card.accuracy) == 2
    text = requests.get(handle.config.metrics_address + "/metrics", timeout=10).text
    gauges = [line for line in text.splitlines() if line.startswith("clipshield_model_accuracy{")]
    for e in ft.accuracy:
        assert any(
            f'attack="{e.attack}"' in g
            and f'dataset="{e.dataset}"' in g
            and 'purified="false"' in g
            and float(g.rsplit(" ", 1)[1]) == pytest.approx(e.value)
            for g in gauges
        ), (e, gauges)
