"""The attack interface and registry.

Shape borrowed from torchattacks' `Attack`: an attack wraps a differentiable classifier
`f(x) -> logits` over images in [0, 1] pixel space (normalisation and resizing happen inside the
classifier, docs/methods.md §0.2) and `attack(images, labels)` returns adversarial images in [0, 1]
within the L-inf epsilon-ball. Randomness comes from an explicit `torch.Generator`; the model's
train/eval mode is restored in `finally`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Optional, Protocol

import torch
from torch import nn

from clipshield.service.errors import UnknownName

Classifier = Callable[[torch.Tensor], torch.Tensor]

_ATTACKS: dict[str, type[Attack]] = {}


def register_attack(name: str) -> Callable[[type[Attack]], type[Attack]]:
    """Class decorator adding an attack to the registry under `name`."""

    def wrap(cls: type[Attack]) -> type[Attack]:
        if name in _ATTACKS:
            raise ValueError(f"attack {name!r} registered twice")
        _ATTACKS[name] = cls
        cls.name = name
        return cls

    return wrap


def list_attacks() -> list[str]:
    """Names of all registered attacks."""
    return sorted(_ATTACKS)


class AttackFactory(Protocol):
    """A registered Attack subclass as callers use it: built from a classifier, eps and the options its class
    defines (alpha, steps, generator, ...; each class checks its own)."""

    name: str

    def __call__(self, model: Classifier, eps: float, *args: Any, **options: Any) -> Attack: ...


def get_attack(name: str) -> AttackFactory:
    """Attack class by registry name; unknown names list the known ones."""
    if name not in _ATTACKS:
        raise UnknownName(f"unknown attack {name!r}; known: {', '.join(list_attacks())}")
    return _ATTACKS[name]


class Attack:
    """Base class: subclasses implement `perturb(images, labels) -> adversarial images`."""

    name = "attack"

    def __init__(self, model: Classifier, eps: float, generator: Optional[torch.Generator] = None) -> None:
        if eps < 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        self.model = model
        self.eps = float(eps)
        self.generator = generator

    def perturb(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Adversarial images [B, 3, H, W] in [0, 1] with |adv - images|_inf <= eps."""
        if images.min() < 0 or images.max() > 1:
            raise ValueError("attacks take images in [0, 1] pixel space (normalise inside the model)")
        module = self.model if isinstance(self.model, nn.Module) else None
        was_training = module.training if module is not None else False
        try:
            with torch.enable_grad():  # attacks need input gradients even when called under no_grad
                adv = self.perturb(images.detach(), labels.detach())
        finally:
            if module is not None:
                module.train(was_training)
        return project(adv.detach(), images, self.eps)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(eps={self.eps:.6f})"


def project(adv: torch.Tensor, images: torch.Tensor, eps: float) -> torch.Tensor:
    """Clip `adv` to the L-inf eps-ball around `images` and to [0, 1]."""
    delta = torch.clamp(adv - images, -eps, eps)
    return torch.clamp(images + delta, 0.0, 1.0)
