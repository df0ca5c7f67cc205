"""Registry of robust fine-tuning methods (timm-style decorator + `list_methods`).

A method is a `Method` record: its loss function `loss(batch: LossInputs, params) -> LossOutput`,
its training adversary, whether it needs a frozen copy of the original model, its own
hyper-parameter model and the recipe defaults of docs/methods.md §0.4. Modules register by explicit
import in `training/methods/__init__.py`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from clipshield.service.config import StrictModel
from clipshield.service.errors import UnknownName
from clipshield.training.methods.adversary import Adversary
from clipshield.training.methods.inputs import LossInputs, LossOutput

# loss(batch, params) -> LossOutput; params is an instance of the method's own `Method.params` model
LossFn = Callable[[LossInputs, Any], LossOutput]
LossT = TypeVar("LossT", bound=LossFn)


@dataclass(frozen=True)
class Method:
    """One fine-tuning method: loss, training adversary, hyper-parameters and recipe defaults."""

    name: str
    loss: LossFn
    params: type[StrictModel]
    adversary: Adversary
    lr: float
    needs_frozen: bool = False
    batch_size: int = 128
    attack_steps: int = 2
    optimizer: Literal["sgd", "adamw"] = "sgd"
    weight_decay: float = 0.0
    needs_negatives: bool = False
    description: str = ""


_METHODS: dict[str, Method] = {}


def register_method(name: str, **spec: Any) -> Callable[[LossT], LossT]:
    """Function decorator registering a loss function as method `name` (spec fields as keywords).

    The method's description (model cards, `--help`) is the first line of the loss function's docstring, less its full stop.
    """

    def wrap(fn: LossT) -> LossT:
        if name in _METHODS:
            raise ValueError(f"method {name!r} registered twice")
        description = (fn.__doc__ or "").strip().split("\n", 1)[0].rstrip(".")
        _METHODS[name] = Method(name=name, loss=fn, description=description, **spec)
        return fn

    return wrap


def list_methods() -> list[str]:
    """Names of all registered fine-tuning methods."""
    return sorted(_METHODS)


def get_method(name: str) -> Method:
    """Method record by name; unknown names raise `UnknownName` listing the known ones."""
    if name not in _METHODS:
        raise UnknownName(f"unknown fine-tuning method {name!r}; known: {', '.join(list_methods())}")
    return _METHODS[name]
