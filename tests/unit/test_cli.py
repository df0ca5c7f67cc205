"""The CLI: every subcommand has --help, user errors are one line with exit status 2, the demo runs offline."""

from __future__ import annotations

import pytest

from clipshield.cli.main import build_parser, main

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


@pytest.mark.parametrize(
    "argv,flag",
    [
        (["finetune", "--method", "tecoa", "--batch-size", "1"], "--batch-size"),
        (["finetune", "--method", "tecoa", "--data", "no-such-set"], "unknown data set 'no-such-set'"),
        (["finetune", "--method", "tecoa", "--param", "alpha"], "KEY=VALUE"),
        (["pretrain", "--steps", "0"], "--steps"),
        (["archive", "--threads", "0"], "--threads"),
    ],
)
def test_bad_flag_values_are_one_line_product_errors(argv, flag, tmp_path, capsys):
    out = {"finetune": "--output", "pretrain": "--output", "archive": "--model-store"}[argv[0]]
    assert main([*argv, out, str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and flag in err[0], err
    assert not (tmp_path / "o").exists()


def test_bugs_keep_their_traceback(monkeypatch):
    """Only the product's own errors become one-line exits; a bug's ValueError/KeyError propagates."""
    import clipshield.cli.commands.finetune as command

    def broken(_args):
        raise KeyError("a bug, not a user error")

    monkeypatch.setattr(command, "config_from_args", broken)
    with pytest.raises(KeyError, match="a bug"):
        main(["finetune", "--method", "tecoa"])


def test_unknown_registry_names_are_product_errors_and_key_errors():
    from clipshield.attacks import get_attack
    from clipshield.datasets import build_dataset
    from clipshield.datasets.registry import DatasetRequest
    from clipshield.service.errors import ConfigError, UnknownName
    from clipshield.training.methods import get_method

    for lookup in (
        lambda: get_method("trades"),
        lambda: get_attack("fgsm-typo"),
        lambda: build_dataset("nope", DatasetRequest()),
        lambda: build_dataset("miniworld/nowhere/shape/seen", DatasetRequest(limit=1)),
    ):
        with pytest.raises(UnknownName, match="known") as info:
            lookup()
        assert isinstance(info.value, ConfigError) and isinstance(info.value, KeyError)
        assert not str(info.value).startswith("'")  # printed as the message, not KeyError's repr
