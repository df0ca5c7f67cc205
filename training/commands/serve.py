"""`clipshield serve`: TorchServe serving (placeholder until its issue lands)."""
from __future__ import annotations

import argparse

from .common import not_available


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="TorchServe serving (not yet available)", description="TorchServe serving. Not yet available in this version.")
    p.set_defaults(run=not_available("serve", "TorchServe serving"))
