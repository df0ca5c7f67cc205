"""Documentation examples are real: every fenced `clipshield ...` command in README.md and docs/*.md parses
with the CLI's own parser (flags exist, choices and data set names valid), and a few short offline ones
run exactly as written (listed in RUN_AS_WRITTEN)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from clipshield.cli.main import build_parser, main

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PROGRAMS = ("clipshield", ".venv/bin/clipshield")
FENCE = re.compile(r"^\s*```")
ASSIGN = re.compile(r'^(\w+)="(.*)"$')
OUTPUT = re.compile(r"^clipshield [\w-]+: ")  # the CLI's own printed messages ("clipshield evaluate: error: ...")

# short, offline commands executed as written (in a temporary working directory): README's help forms and
# the first evaluation of docs/evaluation.md (one cell, 64 images; the other documented runs take minutes)
RUN_AS_WRITTEN = {
    ".venv/bin/clipshield --help",
    ".venv/bin/clipshield evaluate --help",
    ".venv/bin/clipshield evaluate --datasets miniworld/plain/shape/seen --steps 10 --limit 64 --out runs/eval-first",
}


def fenced_lines(path: Path) -> list[str]:
    """Logical lines (backslash continuations joined, indentation stripped) of every fenced block."""
    lines, inside, pending = [], False, ""
    for raw in path.read_text().splitlines():
        if FENCE.match(raw):
            inside, pending = not inside, ""
            continue
        if not inside:
            continue
        text = pending + raw.strip()
        if text.endswith("\\"):
            pending = text[:-1].rstrip() + " "
            continue
        pending = ""
        lines.append(text)
    return lines


def documented_commands() -> list[tuple[str, str]]:
    """(where, command text) of every documented clipshield command, shell variables of its block expanded."""
    found = []
    for path in DOCS:
        variables: dict[str, str] = {}
        for line in fenced_lines(path):
            if OUTPUT.match(line):
                continue
            assign = ASSIGN.match(line)
            if assign:
                variables[assign.group(1)] = " ".join(assign.group(2).split())
                continue
            try:
                words = shlex.split(line, comments=True)
            except ValueError:  # not shell (JSON, Python, output): only a command line must split
                if line.split(" ", 1)[0] in PROGRAMS:
                    raise
                continue
            if words and words[0] in PROGRAMS:
                command = " ".join(shlex.quote(w) for w in words)
                for name, value in variables.items():
                    command = command.replace(f"'${name}'", value).replace(f"${name}", value)
                found.append((f"{path.relative_to(ROOT)}", command))
    return found


COMMANDS = documented_commands()


def test_docs_document_commands_of_every_kind():
    subcommands = {shlex.split(c)[1] for _, c in COMMANDS if len(shlex.split(c)) > 1}
    assert {"evaluate", "finetune", "experiment", "export", "archive", "serve", "pretrain"} <= subcommands
    assert any(c.endswith("--help") for _, c in COMMANDS)


def check_names(args) -> None:
    """Data set names are not argparse choices: resolve them through the registry like the commands do."""
    from clipshield.cli.commands.evaluate import expand_datasets
    from clipshield.datasets import reference_eps

    if args.command == "evaluate":
        for name in expand_datasets(args.datasets):
            reference_eps(name)
    if args.command == "finetune":
        reference_eps(args.data)


@pytest.mark.parametrize("where,command", COMMANDS, ids=[f"{w}:{c[:70]}" for w, c in COMMANDS])
def test_documented_command_parses(where, command, capsys):
    argv = shlex.split(command)[1:]
    if argv[-1] == "--help":
        with pytest.raises(SystemExit) as exc:
            build_parser().parse_args(argv)
        assert exc.value.code == 0
        return
    try:
        args = build_parser().parse_args(argv)  # parse only: the subcommand's run is not executed
    except SystemExit:
        pytest.fail(f"{where}: `{command}` does not parse: {capsys.readouterr().err.strip()}")
    check_names(args)


def test_every_command_run_as_written_is_documented():
    assert RUN_AS_WRITTEN <= {c for _, c in COMMANDS}


@pytest.mark.parametrize("command", sorted(RUN_AS_WRITTEN))
def test_short_documented_command_runs_as_written(command, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = shlex.split(command)[1:]
    if argv[-1] == "--help":
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 0 and "usage: clipshield" in capsys.readouterr().out
        return
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "1 cell(s) computed" in out and "eps=4/255 n=   64" in out
    assert (tmp_path / "runs" / "eval-first" / "results.md").is_file()
