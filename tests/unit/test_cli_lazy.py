"""The CLI loads lazily (issue 24): `clipshield --help` imports no command module and no torch, and the
serving commands (`serve` with either runtime, `archive`, `release`) parse without torch, so the serving
install (`pip install .[serve-kserve]`) can run them. Each case runs in a fresh interpreter that refuses
the training-only packages, as that install would."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from clipshield.cli.commands import COMMANDS
from clipshield.cli.main import build_parser

PROBE = textwrap.dedent(
    """
    import json, sys

    BLOCKED = ("torch", "torchvision", "open_clip", "torchattacks", "onnx")

    class Refuse:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is not installed in a serving install")
            return None

    sys.meta_path.insert(0, Refuse())
    from clipshield.cli.main import main

    try:
        status = main(sys.argv[1:])
    except SystemExit as exc:
        status = exc.code
    commands = sorted(m for m in sys.modules if m.startswith("clipshield.cli.commands."))
    print(json.dumps({"status": status, "commands": commands}))
    """
)


def _probe(*argv: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_top_level_help_imports_no_command():
    assert _probe("--help") == {"status": 0, "commands": []}


@pytest.mark.parametrize(
    "argv",
    [["serve", "--help"], ["serve", "--runtime", "kserve", "--help"], ["archive", "--help"], ["release", "--help"]],
    ids=" ".join,
)
def test_serving_commands_parse_without_torch(argv):
    found = _probe(*argv)
    assert found["status"] == 0
    assert f"clipshield.cli.commands.{argv[0]}" in found["commands"]
    assert not {"clipshield.cli.commands.evaluate", "clipshield.cli.commands.finetune"} & set(found["commands"])


def test_serve_stop_runs_without_torch(tmp_path):
    assert _probe("serve", "--stop", "--model-store", str(tmp_path))["status"] == 0


def test_listed_help_is_each_commands_own():
    full = build_parser()
    (sub,) = [a for a in full._actions if a.dest == "command"]
    registered = {c.dest: c.help for c in sub._choices_actions}
    assert registered == {c.name: c.help for c in COMMANDS}


def test_only_the_named_command_is_loaded():
    parser = build_parser(["release", "--help"])
    (sub,) = [a for a in parser._actions if a.dest == "command"]
    assert [name for name, p in sub.choices.items() if p._actions[1:]] == ["release"]
