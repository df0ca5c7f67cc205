"""Registry of robust fine-tuning methods (timm-style decorator + `list_methods`).

A method is a `Method` record: its loss function, whether it needs a frozen copy of the original
model, how its training adversary is made, its own hyper-parameter model and the recipe defaults of
docs/methods.md §0.4. Modules register by explicit import in `training/methods/__init__.py`.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Optional

import torch

from service.config import StrictModel
from service.pixel_model import PixelCLIP

from .frozen_reference import FrozenModel

AttackKind = Literal["pgd", "fare_pgd", "none"]


@dataclass(frozen=True)
class TextHeads:
    """Class text embeddings computed once per run by the frozen text tower.

    `classes` [C, E] unit-norm embeddings of the training prompt per class; `negatives` [C, E] the
    Comp-TGA negative prompts ("This is not a photo of a {}"), or None when unused.
    """

    classes: torch.Tensor
    negatives: Optional[torch.Tensor] = None


@dataclass
class LossOutput:
    """`total` (the value back-propagated), named loss `terms` and detached diagnostic `outputs`."""

    total: torch.Tensor
    terms: dict[str, torch.Tensor]
    outputs: dict[str, torch.Tensor] = field(default_factory=dict)


# loss(target, frozen, images, adv_images, labels, heads, params) -> LossOutput
LossFn = Callable[
    [PixelCLIP, Optional[FrozenModel], torch.Tensor, Optional[torch.Tensor], torch.Tensor, TextHeads, StrictModel],
    LossOutput,
]


@dataclass(frozen=True)
class Method:
    """One fine-tuning method: loss, adversary kind, hyper-parameters and recipe defaults."""

    name: str
    loss: LossFn
    params: type[StrictModel]
    needs_frozen: bool
    attack: AttackKind
    lr: float
    batch_size: int
    attack_steps: int = 2
    optimizer: Literal["sgd", "adamw"] = "sgd"
    weight_decay: float = 0.0
    needs_negatives: bool = False
    attack_view: Optional[Callable[[PixelCLIP, StrictModel], tuple[PixelCLIP, float]]] = None
    description: str = ""


_METHODS: dict[str, Method] = {}


def register_method(
    name: str, **spec
) -> Callable[[LossFn], LossFn]:
    """Function decorator registering a loss function as method `name` (spec fields as keywords)."""

    def wrap(fn: LossFn) -> LossFn:
        if name in _METHODS:
            raise ValueError(f"method {name!r} registered twice")
        _METHODS[name] = Method(name=name, loss=fn, **spec)
        return fn

    return wrap


def list_methods() -> list[str]:
    """Names of all registered fine-tuning methods."""
    return sorted(_METHODS)


def get_method(name: str) -> Method:
    """Method record by name; unknown names list the known ones."""
    if name not in _METHODS:
        raise KeyError(f"unknown fine-tuning method {name!r}; known: {', '.join(list_methods())}")
    return _METHODS[name]
