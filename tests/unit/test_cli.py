"""The CLI: every subcommand has --help, user errors are one line with exit status 2, the demo runs offline."""
from __future__ import annotations

import pytest

from training.cli import build_parser, main

SUBCOMMANDS = ["pretrain", "finetune", "evaluate", "export", "archive", "serve", "demo", "experiment"]


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert command in out and len(out.splitlines()) > 3


def test_top_level_help_lists_every_subcommand():
    text = build_parser().format_help()
    assert all(c in text for c in SUBCOMMANDS)


def test_demo_model_half_runs_offline(capsys, tmp_path):
    """The demo up to fine-tuning (the serving half is covered by tests/integration/test_torchserve.py)."""
    args = ["demo", "--once", "--no-serve", "--n", "64", "--finetune-steps", "10", "--work-dir", str(tmp_path)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "zero-shot predictions" in out and "miniworld/outlined/shape/seen" in out
    assert "fine-tuned" in out and (tmp_path / "finetune" / "final" / "model.safetensors").is_file()
