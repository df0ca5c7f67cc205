"""`clipshield experiment`: mini-world method comparison (placeholder until its issue lands)."""
from __future__ import annotations

import argparse

from .common import not_available


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("experiment", help="mini-world method comparison (not yet available)", description="mini-world method comparison. Not yet available in this version.")
    p.set_defaults(run=not_available("experiment", "mini-world method comparison"))
