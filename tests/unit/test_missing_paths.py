"""Every subcommand given a missing path (model, checkpoint, export, bundle, archive, data root) answers with
one line and exit status 2, never a traceback (issue 27, point 6); malformed exports and cards too."""

from __future__ import annotations

from pathlib import Path

import pytest

from clipshield.cli.commands import COMMANDS
from clipshield.cli.main import main

SHAPE = "miniworld/plain/shape/seen"


def _cases(tmp):
    """subcommand -> argv naming a path that does not exist (outputs under `tmp`)."""
    gone = str(tmp / "nope" / "final")
    return {
        "pretrain": ["pretrain", "--teacher", gone, "--output", str(tmp / "pre"), "--steps", "1", "--pool-size", "16"],
        "finetune": ["finetune", "--method", "tecoa", "--model", gone, "--output", str(tmp / "ft")],
        "evaluate": ["evaluate", "--model", gone, "--datasets", SHAPE, "--out", str(tmp / "ev")],
        "export": ["export", "--model", gone, "--out", str(tmp / "ex")],
        "release": ["release", gone, "--baseline", gone],
        "archive": ["archive", "--export", gone, "--model-store", str(tmp / "store")],
        "describe": ["describe", gone],
        "serve": ["serve", "--model-store", gone],
        "demo": None,  # reads no path: --work-dir and --model-store are where it writes
        "experiment": ["experiment", "paper", "--model", gone, "--data-root", gone, "--datasets", "cifar10", "--output", str(tmp / "xp")],
    }


def test_the_walk_covers_every_subcommand(tmp_path):
    assert set(_cases(tmp_path)) == {c.name for c in COMMANDS}


@pytest.mark.parametrize("command", [c.name for c in COMMANDS if c.name != "demo"])  # demo reads no path (see _cases)
def test_missing_path_is_one_line_exit_2(command, tmp_path, capsys):
    argv = _cases(tmp_path)[command]
    assert argv is not None
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert code == 2 and err.count("\n") == 0 and err.startswith(f"clipshield {command}: error: "), err


def test_malformed_exports_and_cards_are_one_line(tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model_card.json").write_text("{not json")
    notabundle = tmp_path / "file.txt"
    notabundle.write_text("x")
    not_a_zip = tmp_path / "not-a-zip.mar"
    not_a_zip.write_text("x")
    shipped = Path(__file__).resolve().parents[2] / "models" / "pretrained" / "miniworld" / "config.json"
    bad_config, bad_weights = tmp_path / "ck1", tmp_path / "ck2"
    for folder in (bad_config, bad_weights):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"junk")
    (bad_config / "config.json").write_text("{bad")
    (bad_weights / "config.json").write_text(shipped.read_text())
    for argv in (
        ["archive", "--export", str(bad), "--model-store", str(tmp_path / "s")],
        ["archive", "--export", str(notabundle), "--model-store", str(tmp_path / "s")],
        ["release", str(bad), "--baseline", str(notabundle)],
        ["release", str(bad), "--baseline", str(bad / "model_card.json")],
        ["describe", str(not_a_zip)],
        ["export", "--model", str(bad_config), "--out", str(tmp_path / "x")],
        ["evaluate", "--model", str(bad_weights), "--datasets", SHAPE, "--out", str(tmp_path / "e")],
    ):
        code = main(argv)
        err = capsys.readouterr().err.strip()
        assert code == 2 and err.count("\n") == 0 and "Traceback" not in err, (argv, err)
