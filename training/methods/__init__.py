"""Robust fine-tuning methods; each module registers itself by explicit import here."""

from . import comp_tga, fare, ft, pmg_aft, tecoa, tga_zsr  # noqa: F401
from .adversary import Adversary
from .frozen_reference import FrozenBatch, FrozenReference
from .inputs import AttackBudget, LossInputs, LossOutput, TextHeads
from .registry import Method, get_method, list_methods, register_method

__all__ = [
    "Adversary",
    "AttackBudget",
    "FrozenBatch",
    "FrozenReference",
    "LossInputs",
    "LossOutput",
    "Method",
    "TextHeads",
    "get_method",
    "list_methods",
    "register_method",
]
