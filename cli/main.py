"""`clipshield` command line: one subcommand per job, each in its own module under `cli/commands/`.

`main(argv) -> int` is testable with a list of arguments. Only the module of the command being run is
imported (`clipshield --help` imports none, and no command imports torch before its `run`). Errors a user can fix (missing data set,
unknown model, bad option) are the product's own `ClipshieldError`s: printed as one line, exit status
2, never a stack trace. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Optional

from clipshield.cli.commands import COMMANDS
from clipshield.service.errors import ClipshieldError


def build_parser(argv: Optional[Sequence[str]] = None) -> argparse.ArgumentParser:
    """The CLI's parser. Given `argv`, only the command it names is imported and gets its options; the
    others are listed by name and help. Without `argv`, every command is loaded (tests, docs checks)."""
    parser = argparse.ArgumentParser(
        prog="clipshield",
        description="Adversarially robust CLIP zero-shot classification: pre-train the mini world, "
        "fine-tune (TGA-ZSR and baselines), evaluate robustness, export to ONNX, archive and serve.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = None if argv is None else next((a for a in argv if not a.startswith("-")), None)
    for command in COMMANDS:
        if argv is None or command.name == chosen:
            command.load().register(sub)
        else:
            sub.add_parser(command.name, help=command.help)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the CLI; returns the process exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv).parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.run(args) or 0)
    except ClipshieldError as exc:
        print(f"clipshield {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"clipshield {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
