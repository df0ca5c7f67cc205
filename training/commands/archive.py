"""`clipshield archive`: TorchServe archive (placeholder until its issue lands)."""
from __future__ import annotations

import argparse

from .common import not_available


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("archive", help="TorchServe archive (not yet available)", description="TorchServe archive. Not yet available in this version.")
    p.set_defaults(run=not_available("archive", "TorchServe archive"))
