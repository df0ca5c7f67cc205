"""`clipshield export`: ONNX export (placeholder until its issue lands)."""
from __future__ import annotations

import argparse

from .common import not_available


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="ONNX export (not yet available)", description="ONNX export. Not yet available in this version.")
    p.set_defaults(run=not_available("export", "ONNX export"))
