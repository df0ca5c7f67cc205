"""Robust fine-tuning methods; each module registers itself by explicit import here."""

from clipshield.training.methods import comp_tga, fare, ft, pmg_aft, tecoa, tga_anchor, tga_zsr  # noqa: F401
from clipshield.training.methods.adversary import Adversary
from clipshield.training.methods.frozen_reference import FrozenBatch, FrozenReference
from clipshield.training.methods.inputs import AttackBudget, LossInputs, LossOutput, TextHeads
from clipshield.training.methods.registry import Method, get_method, list_methods, register_method

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
