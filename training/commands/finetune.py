"""`clipshield finetune`: robust fine-tuning (placeholder until its issue lands)."""
from __future__ import annotations

import argparse

from .common import not_available


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("finetune", help="robust fine-tuning (not yet available)", description="robust fine-tuning. Not yet available in this version.")
    p.set_defaults(run=not_available("finetune", "robust fine-tuning"))
