"""`clipshield release`: the robustness gate a model refresh must pass before it is archived and served.

Compares the candidate bundle's model card with the card of the model it replaces (a bundle folder,
a `.mar` or a `model_card.json`), entry by entry under the same protocol; exits 0 when accepted and
3 when refused (a drop beyond a margin, or a protocol difference), printing the table either way.
`--force` releases a refused candidate; the decision is written into the candidate's card.
"""

from __future__ import annotations

import argparse
from pathlib import Path

REFUSED = 3  # exit code of a refused release (2 is the CLI's usage/error code)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "release",
        help="robustness gate: compare a candidate bundle's card with the model it replaces",
        description=__doc__,
    )
    p.add_argument("candidate", type=Path, help="the candidate's exported bundle folder (clipshield export --out)")
    p.add_argument(
        "--baseline",
        type=Path,
        required=True,
        help="the card of the model being replaced: its bundle folder, .mar archive or model_card.json (required)",
    )
    p.add_argument(
        "--max-clean-drop", type=float, default=2.0, help="largest allowed clean-accuracy drop, in points (default: %(default)s)"
    )
    p.add_argument(
        "--max-robust-drop",
        type=float,
        default=1.0,
        help="largest allowed robust-accuracy drop per attack, in points (default: %(default)s)",
    )
    p.add_argument("--force", action="store_true", help="release a refused candidate anyway; recorded in its card with --reason")
    p.add_argument("--reason", default="", help="why, recorded in the card (required with --force; default: none)")
    p.set_defaults(run=run)


def _card(load_card, path: Path, what: str):
    """`load_card(path)`, with a malformed card or archive as one ConfigError line naming `what` (exit 2)."""
    import zipfile

    from pydantic import ValidationError

    from clipshield.service.errors import ConfigError

    if what == "candidate" and not Path(path).is_dir():
        raise ConfigError(f"candidate {path} is not an export folder: give the folder `clipshield export --out` wrote")
    try:
        return load_card(path)
    except (ValidationError, ValueError, OSError, zipfile.BadZipFile) as exc:
        raise ConfigError(
            f"{what} {path}: not a readable model card ({type(exc).__name__}); give a bundle folder, .mar or model_card.json"
        ) from None


def run(args: argparse.Namespace) -> int:
    from clipshield.export.release_gate import Margins, compare, format_report, load_card, record_decision
    from clipshield.service.errors import ConfigError

    if args.force and not args.reason.strip():
        raise ConfigError("--force needs --reason: the override is recorded in the candidate's card")
    margins = Margins(clean=args.max_clean_drop, robust=args.max_robust_drop)
    baseline, candidate = _card(load_card, args.baseline, "--baseline"), _card(load_card, args.candidate, "candidate")
    report = compare(baseline, candidate, margins)
    print(format_report(report, baseline, candidate))
    record_decision(args.candidate, baseline, report, margins, forced=args.force, reason=args.reason)
    if report.accepted:
        return 0
    if args.force:
        print(f"released with --force: {args.reason}")
        return 0
    print("refused: archive the candidate only after fixing it, or pass --force --reason '...' to override")
    return REFUSED
