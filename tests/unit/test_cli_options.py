"""Every option of every subcommand says what it is and its default; pixel budgets have one unit (1/255)."""

from __future__ import annotations

import argparse

import pytest

from clipshield.attacks.budget import MAX_BUDGET, to_pixels
from clipshield.cli.commands.finetune import config_from_args
from clipshield.cli.main import build_parser, main
from clipshield.service.errors import ConfigError

BUDGET_FLAGS = {"--eps", "--alpha", "--attack-alpha", "--eval-eps"}


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def leaf_parsers(parser: argparse.ArgumentParser, prefix: str = "") -> dict[str, argparse.ArgumentParser]:
    """Every runnable (sub)command, nested ones included ('experiment miniworld', 'experiment paper')."""
    out = {}
    for name, child in subparsers(parser).items():
        full = f"{prefix}{name}"
        nested = any(isinstance(a, argparse._SubParsersAction) for a in child._actions)
        out.update(leaf_parsers(child, full + " ") if nested else {full: child})
    return out


def options():
    """(subcommand, action, formatted help) for every option and positional of every subcommand."""
    for name, parser in leaf_parsers(build_parser()).items():
        formatter = parser._get_formatter()
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
                continue  # hidden options (removed flags kept only to name their replacement) have no help to check
            text = formatter._expand_help(action) if action.help else ""
            yield name, action, text


def label(action: argparse.Action) -> str:
    return action.option_strings[-1] if action.option_strings else action.dest


def test_every_subcommand_is_walked():
    assert set(subparsers(build_parser())) == {
        "pretrain",
        "finetune",
        "evaluate",
        "export",
        "release",
        "archive",
        "describe",
        "serve",
        "demo",
        "experiment",
    }
    assert {"experiment miniworld", "experiment paper"} <= set(leaf_parsers(build_parser()))
    assert sum(1 for _ in options()) > 80


def test_every_option_has_help():
    missing = [f"{cmd} {label(a)}" for cmd, a, text in options() if not text.strip()]
    assert not missing, f"options without help: {missing}"


def test_every_valued_option_states_its_default():
    """An option that takes a value and is not required says what happens when it is not given."""
    bad = []
    for cmd, action, text in options():
        takes_value = action.option_strings and action.nargs != 0 and not action.required
        if takes_value and "default" not in text.lower():
            bad.append(f"{cmd} {label(action)}")
    assert not bad, f"options whose help does not state the default: {bad}"


def test_numeric_defaults_appear_in_help():
    bad = []
    for cmd, action, text in options():
        default = action.default
        numeric = isinstance(default, (int, float)) and not isinstance(default, bool) and action.nargs != 0
        if numeric and f"{default:g}" not in text and str(default) not in text:
            bad.append(f"{cmd} {label(action)} (default {default})")
    assert not bad, f"numeric defaults missing from help (use %(default)s): {bad}"


def test_pixel_budget_flags_state_their_unit():
    seen = {(cmd, label(a)) for cmd, a, text in options() if label(a) in BUDGET_FLAGS and "1/255" in text}
    every = {(cmd, label(a)) for cmd, a, _ in options() if label(a) in BUDGET_FLAGS}
    assert every and seen == every
    assert {
        ("finetune", "--eps"),
        ("finetune", "--attack-alpha"),
        ("finetune", "--eval-eps"),
        ("experiment miniworld", "--eps"),
        ("experiment paper", "--eps"),
        ("evaluate", "--eps"),
        ("evaluate", "--alpha"),
    } <= every


def finetune_args(*argv):
    return build_parser().parse_args(["finetune", *argv])


def test_finetune_eps_is_in_units_of_1_255():
    """`finetune --method fare --eps 4` used to train against eps 4.0 (the whole pixel range)."""
    cfg = config_from_args(finetune_args("--method", "fare", "--eps", "4", "--attack-alpha", "1", "--eval-eps", "2"))
    assert cfg.attack.eps == pytest.approx(4 / 255) and cfg.attack.alpha == pytest.approx(1 / 255)
    assert cfg.evaluation.eps == pytest.approx(2 / 255)
    real = config_from_args(finetune_args("--method", "tecoa", "--data", "tinyimagenet", "--eps", "1"))
    assert real.attack.eps == pytest.approx(1 / 255)


def test_experiment_eps_is_in_units_of_1_255(tmp_path):
    from clipshield.cli.commands.experiment import experiment_config

    args = build_parser().parse_args(["experiment", "miniworld", "--eps", "2", "--output", str(tmp_path)])
    assert experiment_config(args, "tecoa", seed=0).attack.eps == pytest.approx(2 / 255)
    default = build_parser().parse_args(["experiment", "miniworld", "--output", str(tmp_path)])
    assert experiment_config(default, "tecoa", seed=0).attack.eps == pytest.approx(4 / 255)


@pytest.mark.parametrize("value", [-1.0, MAX_BUDGET + 1, 255.0, float("nan"), 0.0157])
def test_budget_out_of_range_is_refused_naming_the_range(value):
    with pytest.raises(ConfigError, match=r"allowed: 0, or 0\.1 to 64, in units of 1/255"):
        to_pixels(value, "--eps")


def test_zero_step_size_is_refused_and_zero_budget_allowed():
    assert to_pixels(0.0, "--eps") == 0.0 and to_pixels(None, "--eps") is None
    with pytest.raises(ConfigError, match=r"--alpha 0 is out of range; allowed: 0\.1 to 64"):
        to_pixels(0.0, "--alpha", allow_zero=False)


@pytest.mark.parametrize(
    "argv",
    [
        ["finetune", "--method", "fare", "--eps", "300"],
        ["finetune", "--method", "tecoa", "--attack-alpha", "-1"],
        ["finetune", "--method", "tecoa", "--eval-eps", "0.0157"],
        ["experiment", "miniworld", "--eps", "100"],
        ["evaluate", "--eps", "-4"],
        ["evaluate", "--alpha", "70"],
    ],
)
def test_cli_refuses_bad_budgets_in_one_line_before_any_work(argv, tmp_path, capsys):
    out = ["--output", str(tmp_path / "o")] if argv[0] in ("finetune", "experiment") else ["--out", str(tmp_path / "o")]
    assert main([*argv, *out]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "allowed:" in err and "units of 1/255" in err
    assert not (tmp_path / "o").exists()


def test_finetune_through_main_trains_at_the_budget_it_prints(tmp_path, capsys, monkeypatch):
    """`finetune --method fare --eps 4` reaches the training loop as 4/255 and says so before training."""
    import clipshield.training.finetune

    seen = []

    def fake_finetune(cfg, on_step=None):
        seen.append(cfg)
        return None, {}  # what a non-zero torchrun rank gets: nothing to report

    monkeypatch.setattr(clipshield.training.finetune, "finetune", fake_finetune)
    assert main(["finetune", "--method", "fare", "--eps", "4", "--eval-eps", "1", "--output", str(tmp_path)]) == 0
    (cfg,) = seen
    assert cfg.attack.eps == pytest.approx(4 / 255) and cfg.evaluation.eps == pytest.approx(1 / 255)
    out = capsys.readouterr().out
    assert "training eps 4/255, model card at eval eps 1/255" in out
