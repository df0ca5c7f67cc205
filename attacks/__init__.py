"""Attack library: every attack registers itself by explicit import here."""

from clipshield.attacks import adaptive, autoattack, pgd  # noqa: F401
from clipshield.attacks.base import Attack, get_attack, list_attacks, project, register_attack

__all__ = ["Attack", "get_attack", "list_attacks", "project", "register_attack"]
