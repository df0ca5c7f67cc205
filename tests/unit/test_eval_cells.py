"""Evaluation cells are keyed by what determines their numbers: a change to any key field is a new cell.

One test per key field (and per purification / preprocessing setting), a guard that every CellKey
field is covered here, and end-to-end checks through `Evaluator`: renaming a model reuses its cells,
new weights or another preset recompute them, and cells of an older schema are never reused.
"""

from __future__ import annotations

import copy
import json
import logging

import pytest
import torch

from clipshield.evaluation.runner import EvalConfig, Evaluator
from clipshield.evaluation.schema import CellKey, CellResult, cell_path, load_all, load_finished, write_cell
from clipshield.models.purify import PurifyConfig
from clipshield.service.config import PreprocessConfig

PRE = PreprocessConfig(image_size=32)
BASE = CellKey(
    weights="0123456789abcdef",
    dataset="miniworld/plain/shape/seen",
    split="test",
    preprocess=PRE,
    attack="pgd",
    eps=4 / 255,
    steps=10,
    alpha=1 / 255,
    restarts=1,
    seed=0,
    purification=PurifyConfig(steps=10, step_size=30.0, mode="per_sample"),
    limit=16,
    data_options={},
)

CHANGES = {
    "weights": {"weights": "fedcba9876543210"},
    "dataset": {"dataset": "miniworld/plain/color/seen"},
    "split": {"split": "val"},
    "preprocess.image_size": {"preprocess": PRE.model_copy(update={"image_size": 224})},
    "preprocess.resize_mode": {"preprocess": PRE.model_copy(update={"resize_mode": "squash"})},
    "preprocess.resize_ratio": {"preprocess": PRE.model_copy(update={"resize_ratio": 256 / 224})},
    "preprocess.interpolation": {"preprocess": PRE.model_copy(update={"interpolation": "bilinear"})},
    "preprocess.antialias": {"preprocess": PRE.model_copy(update={"antialias": False})},
    "preprocess.mean": {"preprocess": PRE.model_copy(update={"mean": (0.485, 0.456, 0.406)})},
    "preprocess.std": {"preprocess": PRE.model_copy(update={"std": (0.229, 0.224, 0.225)})},
    "attack": {"attack": "cw"},
    "eps": {"eps": 1 / 255},
    "steps": {"steps": 100},
    "alpha": {"alpha": None},
    "restarts": {"restarts": 5},
    "seed": {"seed": 1},
    "purification.off": {"purification": None},
    "purification.steps": {"purification": PurifyConfig(steps=5, step_size=30.0, mode="per_sample")},
    "purification.step_size": {"purification": PurifyConfig(steps=10, step_size=10.0, mode="per_sample")},
    "purification.mode": {"purification": PurifyConfig(steps=10, step_size=30.0, mode="batch")},
    "stop": {"stop": "early"},
    "precision": {"precision": "bf16"},
    "attack_precision": {"attack_precision": "bf16"},
    "limit": {"limit": None},
    "data_options": {"data_options": {"lowres": "native"}},
}


def _result(key: CellKey) -> CellResult:
    return CellResult(key=key, model_id="display name", n=16, clean=0.5, robust=0.25)


def test_every_key_field_has_a_stale_cell_test():
    assert {name.split(".")[0] for name in CHANGES} == set(CellKey.model_fields)


@pytest.mark.parametrize("field", list(CHANGES))
def test_changing_one_key_field_gives_a_new_cell(tmp_path, field):
    write_cell(tmp_path, _result(BASE))
    assert load_finished(tmp_path, BASE) == _result(BASE)
    changed = BASE.model_copy(update=CHANGES[field])
    assert changed != BASE
    assert changed.digest() != BASE.digest() and cell_path(tmp_path, changed) != cell_path(tmp_path, BASE)
    assert load_finished(tmp_path, changed) is None


def test_a_stored_cell_under_another_key_is_not_reused(tmp_path):
    """Even at the same file name (a digest collision or a hand-copied file), the stored key must match."""
    other = BASE.model_copy(update={"seed": 7})
    cell_path(tmp_path, BASE).parent.mkdir(parents=True)
    cell_path(tmp_path, BASE).write_text(_result(other).model_dump_json())
    assert load_finished(tmp_path, BASE) is None


def test_old_schema_cells_are_never_reused_nor_reported(tmp_path, caplog):
    path = cell_path(tmp_path, BASE)
    path.parent.mkdir(parents=True)
    old = json.loads(_result(BASE).model_dump_json())
    old["schema_version"] = 1
    path.write_text(json.dumps(old))
    (path.parent / "v1-cell.json").write_text(json.dumps({"schema_version": 1, "key": {"model_id": "m", "purification": False}}))
    with caplog.at_level(logging.WARNING):
        assert load_finished(tmp_path, BASE) is None
        assert load_all(tmp_path) == []
    assert "stale cell" in caplog.text and "2 cell(s)" in caplog.text


def _run(model, out, model_id="mw", preprocess="model"):
    cfg = EvalConfig(
        model_id=model_id, datasets=["miniworld/plain/shape/seen"], attacks=[], limit=8, batch_size=8, preprocess=preprocess, out_dir=out
    )
    evaluator = Evaluator(model, cfg)
    (result,) = evaluator.run()
    return evaluator, result


def test_renaming_reuses_cells_new_weights_or_preset_recompute(miniworld_model, tmp_path):
    first, cell = _run(miniworld_model, tmp_path)
    assert len(first.computed) == 1 and cell.protocol["preprocess"] == "model" and cell.key.preprocess == miniworld_model.record.preprocess
    renamed, again = _run(miniworld_model, tmp_path, model_id="another name")
    assert len(renamed.skipped) == 1 and again.model_id == "another name" and again.clean == cell.clean
    other = copy.deepcopy(miniworld_model)
    with torch.no_grad():
        other.clip.visual.proj.mul_(1.01)
    retrained, _ = _run(other, tmp_path, model_id="mw")  # same display name, different weights
    assert len(retrained.computed) == 1
    paper, paper_cell = _run(miniworld_model, tmp_path, preprocess="paper")
    assert len(paper.computed) == 1 and paper_cell.protocol["preprocess"] == "paper"
    assert paper_cell.key.preprocess.resize_to == 37  # round(32 * 256 / 224) then the 32-pixel crop
    assert len(load_all(tmp_path)) == 3


@pytest.mark.parametrize("command", ["evaluate", "finetune"])
def test_preprocess_option_defaults_to_the_model_and_names_the_presets(command, capsys):
    from clipshield.cli.commands import evaluate, finetune
    from clipshield.cli.main import build_parser

    parser = build_parser()
    extra = ["--method", "tecoa"] if command == "finetune" else []

    def preset(argv):  # evaluation keeps it at the top of its config, fine-tuning in the data set settings
        if command == "evaluate":
            return evaluate.config_from_args(parser.parse_args(argv)).preprocess
        return finetune.config_from_args(parser.parse_args(argv)).dataset.preprocess

    assert preset([command, *extra]) == "model"
    assert preset([command, *extra, "--preprocess", "paper"]) == "paper"
    with pytest.raises(SystemExit):
        parser.parse_args([command, *extra, "--preprocess", "imagenet"])
    assert "model,paper,squash" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser.parse_args([command, "--help"])
    assert "(default: model)" in " ".join(capsys.readouterr().out.split())
