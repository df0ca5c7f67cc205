"""`clipshield` command line: one subcommand per job, each in its own module under `cli/commands/`.

`main(argv) -> int` is testable with a list of arguments. Errors a user can fix (missing data set,
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clipshield",
        description="Adversarially robust CLIP zero-shot classification: pre-train the mini world, "
        "fine-tune (TGA-ZSR and baselines), evaluate robustness, export to ONNX, archive and serve.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS:
        module.register(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the CLI; returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
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
