"""`clipshield evaluate` end to end on the mini world: JSON schema, resume, Markdown, PNG, errors."""

from __future__ import annotations

import json

import pytest
import torch

from clipshield.cli.main import main
from clipshield.evaluation.report import markdown
from clipshield.evaluation.runner import EvalConfig, Evaluator, cell_generator, cell_keys
from clipshield.evaluation.schema import SCHEMA_VERSION, CellKey, load_all
from clipshield.models.purify import PurifyConfig
from clipshield.service.config import PreprocessConfig
from tests.conftest import golden_weights

SHAPE = "miniworld/plain/shape/seen"
COLOR = "miniworld/plain/color/seen"
BASE = ["evaluate", "--eps", "4", "--steps", "2", "--limit", "16", "--batch-size", "16", "--device", "cpu"]


def test_cli_writes_versioned_json_markdown_and_plot(tmp_path, capsys):
    out = tmp_path / "eval"
    assert main([*BASE, "--datasets", SHAPE, COLOR, "--attacks", "pgd", "cw", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["schema_version"] == SCHEMA_VERSION
    assert len(summary["cells"]) == 4
    cell = summary["cells"][0]
    assert {"weights", "preprocess", "dataset", "split", "attack", "eps", "steps", "seed", "purification"} <= set(cell["key"])
    assert cell["model_id"] == "miniworld" and "model_id" not in cell["key"] and cell["key"]["eps"] == pytest.approx(4 / 255)
    assert cell["protocol"]["preprocess"] == "model"
    assert cell["n"] == 16 and 0 <= cell["robust"] <= cell["clean"] + 1e-9
    row = f"miniworld @{cell['key']['weights'][:8]}"  # rows named by weights digest (issue 27)
    assert set(summary["averages"]) == {f"{row} | PGD-2 eps=4/255", f"{row} | CW-2 eps=4/255"}
    table = (out / "results.md").read_text()
    assert "| Method | miniworld/plain/shape/seen | miniworld/plain/color/seen | Average |" in table
    assert "### Robust: PGD-2 eps=4/255" in table and "### Clean" in table
    png = (out / "robust_vs_clean.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert "4 cell(s) computed, 0 reused" in capsys.readouterr().out


def test_rerun_resumes_from_finished_cells(tmp_path, capsys):
    out = tmp_path / "eval"
    assert main([*BASE, "--datasets", SHAPE, "--attacks", "pgd", "--out", str(out)]) == 0
    (first,) = sorted((out / "cells").glob("*.json"))
    stamp = first.stat().st_mtime_ns
    capsys.readouterr()
    assert main([*BASE, "--datasets", SHAPE, "--attacks", "pgd", "cw", "--out", str(out)]) == 0
    assert "1 cell(s) computed, 1 reused" in capsys.readouterr().out
    assert first.stat().st_mtime_ns == stamp  # the finished cell was read, not rewritten
    assert {c.key.attack for c in load_all(out)} == {"pgd", "cw"}
    # a different seed is a different cell
    assert main([*BASE, "--datasets", SHAPE, "--attacks", "pgd", "--seed", "1", "--out", str(out)]) == 0
    assert "1 cell(s) computed, 0 reused" in capsys.readouterr().out


def test_same_seed_gives_same_numbers(miniworld_model, tmp_path):
    def run(folder):
        cfg = EvalConfig(model_id="mw", datasets=[SHAPE], attacks=["pgd"], eps=1 / 255, steps=2, limit=16, out_dir=folder)
        return Evaluator(miniworld_model, cfg).run()[0]

    a, b = run(tmp_path / "a"), run(tmp_path / "b")
    assert (a.clean, a.robust) == (b.clean, b.robust)
    key = a.key
    assert torch.equal(torch.rand(4, generator=cell_generator(key)), torch.rand(4, generator=cell_generator(key)))
    other = CellKey(**{**key.model_dump(), "seed": 1})
    assert not torch.equal(torch.rand(4, generator=cell_generator(key)), torch.rand(4, generator=cell_generator(other)))


def test_pgd_at_reference_eps_collapses_the_base_model(miniworld_model, tmp_path):
    """Foundation numbers through the evaluator: clean >= 0.85, PGD-10 at 4/255 below a third of it."""
    cfg = EvalConfig(
        model_id="miniworld",
        datasets=["miniworld/plain/color_shape/seen"],
        attacks=["pgd"],
        eps=4 / 255,
        alpha=1 / 255,
        steps=10,
        limit=128,
        batch_size=128,
        out_dir=tmp_path,
    )
    (cell,) = Evaluator(miniworld_model, cfg).run()
    assert cell.clean >= 0.85, cell
    assert cell.robust < cell.clean / 3, cell


def test_purified_evaluation_reports_gradient_masking(tmp_path, capsys):
    out = tmp_path / "eval"
    args = ["evaluate", "--eps", "4", "--alpha", "2", "--steps", "5", "--limit", "16", "--batch-size", "16", "--device", "cpu"]
    assert main([*args, "--datasets", SHAPE, "--attacks", "pgd", "--purify", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "[gradient masked]" in printed
    (cell,) = load_all(out)
    assert cell.key.purification == PurifyConfig() and cell.adaptive is not None
    assert cell.robust == cell.adaptive.worst_case < cell.adaptive.robust["full"]
    table = (out / "results.md").read_text()
    assert "### Adaptive attacks on purification" in table and "**gradient masked**" in table
    assert f"miniworld @{cell.key.weights[:8]} + CLIPure-Cos" in table


def test_missing_real_dataset_is_one_line_exit_2(tmp_path, capsys):
    missing = tmp_path / "no-such-data"
    code = main([*BASE, "--datasets", "cifar10", "--data-root", str(missing), "--out", str(tmp_path / "o")])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert str(missing) in err and "cifar10" in err
    assert not (tmp_path / "o" / "cells").exists()  # failed before any attack ran


def test_several_missing_sets_fail_in_one_line_or_are_skipped(tmp_path, capsys):
    root = tmp_path / "data"
    assert main([*BASE, "--datasets", SHAPE, "cifar10", "dtd", "--data-root", str(root), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "and 1 more missing" in err
    out = tmp_path / "o2"
    assert main([*BASE, "--datasets", SHAPE, "cifar10", "--data-root", str(root), "--skip-missing", "--steps", "1", "--out", str(out)]) == 0
    assert "skipped missing data set: cifar10" in capsys.readouterr().out
    assert [c.key.dataset for c in load_all(out)] == [SHAPE]


def test_unknown_attack_and_dataset_are_one_line_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:  # argparse choices come from the registry
        main([*BASE, "--attacks", "fgsm-typo", "--out", str(tmp_path)])
    assert exc.value.code == 2
    capsys.readouterr()
    assert main([*BASE, "--datasets", "miniworld/nowhere/shape/seen", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nowhere" in err


def test_cell_keys_and_markdown_without_attacks(tmp_path):
    cfg = EvalConfig(model_id="m", datasets=[SHAPE], attacks=[], out_dir=tmp_path)
    (key,) = cell_keys(cfg, SHAPE, "0" * 16, PreprocessConfig(image_size=32))
    assert key.attack == "none" and key.eps == 0 and key.steps == 0
    assert markdown([]).startswith("# Zero-shot robustness")


def test_any_open_clip_config_model_is_evaluated_through_the_same_path(goldens, tmp_path, capsys):
    """The goldens' tiny open_clip CLIP (224 px, config JSON + weights) on mini-world images resized inside."""
    out = tmp_path / "eval"
    model = ["--model", str(goldens / "tiny_clip.json"), "--weights", str(golden_weights(goldens, "model_frozen")), "--model-id", "tiny"]
    assert main([*BASE, *model, "--datasets", SHAPE, "--attacks", "pgd", "--limit", "8", "--out", str(out)]) == 0
    (cell,) = load_all(out)
    assert cell.model_id == "tiny" and cell.n == 8 and cell.key.preprocess.image_size == 224
    assert f"| tiny @{cell.key.weights[:8]} |" in (out / "results.md").read_text()
