"""`clipshield experiment paper`: the dry-run plan of a published table and a tiny real run on the mini world."""

from __future__ import annotations

import json

from clipshield.cli.main import main
from clipshield.experiments.paper import EVAL_SIZES, eval_passes_per_image, load_tables, table_spec


def test_dry_run_plans_the_full_16_dataset_table(capsys):
    assert main(["experiment", "paper", "--table", "tga-zsr-1", "--model", "ViT-B-32", "--dry-run"]) == 0
    out = capsys.readouterr().out
    spec = table_spec("tga-zsr-1")
    datasets = load_tables()["datasets"]
    assert len(datasets) == 16
    assert f"cells: {len(spec['rows']) * 16}" in out
    assert f"images per method: {sum(EVAL_SIZES[d] for d in datasets):,}" in out
    assert "pgd, 100 steps, eps 1/255" in out
    assert "TGA-ZSR Table 8" in out and "device-hours" in out and "GB of checkpoints" in out


def test_dry_run_measures_the_cost_per_pass_when_asked(capsys):
    args = [
        "experiment",
        "paper",
        "--model",
        "miniworld",
        "--datasets",
        "miniworld/plain/color_shape/seen",
        "--methods",
        "base",
        "tecoa",
        "--train-data",
        "miniworld-train",
        "--dry-run",
        "--measure",
        "--device",
        "cpu",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "measured here on cpu" in out
    assert "cells: 2" in out


def test_autoattack_costs_more_passes_than_pgd():
    assert eval_passes_per_image("autoattack", 100) > 10 * eval_passes_per_image("pgd", 100)


def test_tiny_real_run_on_the_mini_world_writes_the_comparison_table(tmp_path, capsys):
    out = tmp_path / "paper"
    args = [
        "experiment",
        "paper",
        "--table",
        "tga-zsr-1",
        "--model",
        "miniworld",
        "--methods",
        "base",
        "tecoa",
        "--datasets",
        "miniworld/plain/color_shape/seen",
        "--train-data",
        "miniworld-train",
        "--steps",
        "2",
        "--train-limit",
        "32",
        "--limit",
        "16",
        "--attack-steps",
        "2",
        "--eps",
        "4",
        "--device",
        "cpu",
        "--output",
        str(out),
    ]
    assert main(args) == 0
    table = json.loads((out / "table.json").read_text())
    assert set(table["ours"]) == {"base", "tecoa"}
    for row in table["ours"].values():
        assert 0.0 <= row["miniworld/plain/color_shape/seen"] <= 100.0
    text = (out / "table.md").read_text()
    assert "| base |" in text and "| tecoa |" in text and "(—)" in text  # no published number for the mini world
    assert (out / "finetune" / "tecoa" / "final" / "model.safetensors").is_file()
    assert list((out / "eval" / "base").rglob("*.json")), "evaluation cells are written (and reused on a re-run)"
    assert main(args) == 0  # a re-run reuses the fine-tuned checkpoint and the finished cells
    assert json.loads((out / "table.json").read_text())["ours"] == table["ours"]
