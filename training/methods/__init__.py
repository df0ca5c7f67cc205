"""Robust fine-tuning methods; each module registers itself by explicit import here."""
from . import comp_tga, fare, ft, pmg_aft, tecoa, tga_zsr  # noqa: F401
from .adversary import make_adversarial
from .frozen_reference import FrozenModel, FrozenReference
from .registry import LossOutput, Method, TextHeads, get_method, list_methods, register_method

__all__ = ["FrozenModel", "FrozenReference", "LossOutput", "Method", "TextHeads", "get_method", "list_methods", "make_adversarial", "register_method"]
