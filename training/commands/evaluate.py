"""`clipshield evaluate`: robustness evaluation (placeholder until its issue lands)."""
from __future__ import annotations

import argparse

from .common import not_available


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="robustness evaluation (not yet available)", description="robustness evaluation. Not yet available in this version.")
    p.set_defaults(run=not_available("evaluate", "robustness evaluation"))
