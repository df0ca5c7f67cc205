"""Registry of robust fine-tuning methods (timm-style decorator + `list_methods`).

A method is a `Method` record: its loss function `loss(batch: LossInputs, params) -> LossOutput`,
its training adversary, whether it needs a frozen copy of the original model, its own
hyper-parameter model, the recipe defaults of docs/methods.md §0.4 and its search space (what
`clipshield experiment tune` may vary: the learning rate always, plus its own loss weights;
`clipshield.training.methods.search_space`). Modules register by explicit import in `training/methods/__init__.py`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from clipshield.service.config import StrictModel
from clipshield.service.errors import UnknownName
from clipshield.training.methods.adversary import Adversary
from clipshield.training.methods.inputs import LossInputs, LossOutput
from clipshield.training.methods.search_space import LR_RANGE, LR_SCALE, Dimension, SearchSpace, checked_space

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
    search_space: dict[str, Dimension] = field(default_factory=lambda: {LR_SCALE: LR_RANGE})


_METHODS: dict[str, Method] = {}


def register_method(name: str, search_space: SearchSpace | None = None, **spec: Any) -> Callable[[LossT], LossT]:
    """Function decorator registering a loss function as method `name` (spec fields as keywords).

    The method's description (model cards, `--help`) is the first line of the loss function's docstring, less its full stop.
    `search_space` names the loss weights tuning may vary (fields of `params`); `lr_scale` is always in it.
    """

    space = checked_space(name, search_space or {}, spec["params"].model_fields)

    def wrap(fn: LossT) -> LossT:
        if name in _METHODS:
            raise ValueError(f"method {name!r} registered twice")
        description = (fn.__doc__ or "").strip().split("\n", 1)[0].rstrip(".")
        _METHODS[name] = Method(name=name, loss=fn, description=description, search_space=space, **spec)
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
